//! The five evaluator checks' prompts on a fixed input hold what the original's templates held
//! (issue 15): the dimension's own rubric text, the `[Memory]` block, the action, the
//! recommendation, what to make of "No Recommendation", the answer format and the worked
//! examples with their verdicts. The exact wording is a snapshot in
//! `tests/fixtures/evaluator_prompts/<check>.txt` (`<check>.rubric_first.txt` for the
//! `rubric_first` layout); after a deliberate change, rewrite the snapshots with
//! `PROPERSIM_UPDATE_FIXTURES=1 cargo test --test evaluator_prompts`.

use std::path::PathBuf;

use indexmap::IndexMap;
use propersim::config::EvaluatorLayout as Layout;
use propersim::llm::Task;
use propersim::suggestion::Suggestion;
use propersim::user::evaluator::{action_line, memory_entry, Check, EvalInput, ScoreCheck, SCORE_FORMAT};
use propersim::user::profile::{Profile, DIMENSIONS};
use serde_json::Value;

fn profile() -> Profile {
    let mut criteria = IndexMap::new();
    criteria.insert("Personal_Preference".into(), "I like suggestions about healthy cooking and jazz.".into());
    criteria.insert("Timing".into(), "Never while I am reading; mornings are fine.".into());
    criteria.insert("Frequency".into(), "About twice every 2 to 3 hours.".into());
    criteria.insert("Communication_&_Safety".into(), "A warm, brief tone; nothing about my finances.".into());
    Profile {
        name: "John Lin".into(),
        first_name: "John".into(),
        age: "45".into(),
        traits: "open, conscientious".into(),
        background: "a pharmacist".into(),
        interests: "cooking, jazz".into(),
        lifestyle: "up at 7, in bed by 11".into(),
        goals: "stay healthy".into(),
        daily_plan_req: "cook and read".into(),
        living_area: "the Ville:Lin family's house:kitchen".into(),
        criteria,
    }
}

const MEMORY: &str = "TIME: Thursday February 13 08:00 AM - 09:00 AM\nNumber of recommendations: 1\nSUMMARY: John cooked; the assistant suggested a stretch.\n\nThis hour so far:\nThursday February 13 -- 09:00:00 AM\nJohn Lin's action: having breakfast (eating toast)\nSuggestion: No Recommendation\n";

fn input(suggestion: Suggestion) -> EvalInput {
    EvalInput {
        time: "Thursday February 13 -- 09:02:30 AM".into(),
        action: "cooking breakfast (frying eggs)".into(),
        walking: false,
        suggestion,
        memory: MEMORY.into(),
        recs_last_hour: 1,
    }
}

fn render(check: Check, input: &EvalInput) -> (String, String) {
    render_in(check, input, Layout::Original)
}

fn render_in(check: Check, input: &EvalInput, layout: Layout) -> (String, String) {
    let p = profile();
    let msgs = ScoreCheck { profile: &p, check, input, layout }.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!((msgs[0].role.as_str(), msgs[1].role.as_str()), ("system", "user"));
    (msgs[0].content.clone(), msgs[1].content.clone())
}

/// Compare with the committed snapshot, printing a line diff on a mismatch.
fn snapshot(name: &str, got: &str) -> Result<(), String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evaluator_prompts").join(format!("{name}.txt"));
    if std::env::var_os("PROPERSIM_UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, got).unwrap();
        return Ok(());
    }
    let want = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if want == got {
        return Ok(());
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut diff = String::new();
    for i in 0..w.len().max(g.len()) {
        match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                if let Some(a) = a {
                    diff.push_str(&format!("{:>4} - {a}\n", i + 1));
                }
                if let Some(b) = b {
                    diff.push_str(&format!("{:>4} + {b}\n", i + 1));
                }
            }
        }
    }
    Err(format!("{name}: the prompt differs from {} (- snapshot, + now):\n{diff}", path.display()))
}

#[test]
fn each_check_prompt_matches_its_snapshot() {
    let mut failures = Vec::new();
    for (layout, suffix) in [(Layout::Original, ""), (Layout::RubricFirst, ".rubric_first")] {
        for check in Check::ALL {
            let inp = input(Suggestion::Text("Add some spinach to the eggs.".into()));
            let (system, user) = render_in(check, &inp, layout);
            let text = format!("=== system ===\n{system}\n=== user ===\n{user}\n");
            if let Err(e) = snapshot(&format!("{}{suffix}", check.key()), &text) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_check_prompt_holds_the_original_templates_elements() {
    let p = profile();
    for check in Check::ALL {
        let (system, user) = render(check, &input(Suggestion::Text("Add some spinach to the eggs.".into())));
        // Who is grading, and what the sections are.
        assert!(system.starts_with("You are John Lin."), "{system}");
        for s in ["[Memory]", "[Action]", "[Agent's Recommendation]", "No Recommendation", "0 if"] {
            assert!(system.contains(s), "{check:?}: system lacks {s}");
        }
        // The sections in the original's order, each with its content.
        let order = [
            "[John Lin]\nName: John Lin".to_string(),
            format!("[Memory]\n{}\n\n", MEMORY.trim_end()),
            "[Action]\nThursday February 13 -- 09:02:30 AM\nJohn Lin is cooking breakfast (frying eggs)\n".to_string(),
            "[Agent's Recommendation]\nAdd some spinach to the eggs.\n".to_string(),
            format!("[{}]\n{}\n", check.section(), p.criterion(check.dimension())),
        ];
        let mut at = 0;
        for part in &order {
            let i = user[at..]
                .find(part.as_str())
                .unwrap_or_else(|| panic!("{check:?}: missing or out of order: {part:?}\n{user}"));
            at += i + part.len();
        }
        // Only this check's dimension is given.
        for d in DIMENSIONS.iter().filter(|d| **d != check.dimension()) {
            assert!(!user.contains(p.criterion(d)), "{check:?} carries the {d} rubric too");
        }
        assert!(user.contains("Today: Thursday February 13\n"));
        // The check's instructions, the answer format and the worked examples, after the rubric.
        let tail = &user[at..];
        assert!(tail.contains(&check.guidance()));
        assert!(tail.contains(&format!("Answer with JSON in this format: {SCORE_FORMAT}")));
        let schema =
            ScoreCheck { profile: &p, check, input: &input(Suggestion::NoRec), layout: Layout::Original }.schema();
        assert_eq!(schema["properties"]["Score"]["enum"], serde_json::json!([0, 1]), "{schema}");
        let examples: Vec<Value> = tail
            .lines()
            .filter_map(|l| l.strip_prefix("Example "))
            .map(|l| serde_json::from_str(l.split_once(": ").unwrap().1).unwrap())
            .collect();
        let verdicts: Vec<u64> = examples.iter().map(|e| e["Score"].as_u64().unwrap()).collect();
        // The original's examples and their verdicts, per template.
        let want: &[u64] = match check {
            Check::Preference | Check::Timing => &[1, 0, 0],
            Check::TooOften | Check::TooRarely => &[1, 0, 0, 0],
            Check::Communication => &[1, 0],
        };
        assert_eq!(verdicts, want, "{check:?}");
        for e in &examples {
            // Each example is an answer the schema admits.
            let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["Score", "Reason"]);
            assert!(e["Reason"].as_str().unwrap().len() <= 200);
        }
        // Nothing of our old rules.
        for gone in ["never makes it too often", "never makes it too rare", "Staying quiet raises no such issue"] {
            assert!(!user.contains(gone) && !system.contains(gone), "{check:?}: {gone}");
        }
    }
}

#[test]
fn the_hard_rules_and_no_recommendation_guidance_are_per_check() {
    let g = |c: Check| c.guidance();
    assert!(g(Check::TooOften).contains("above the frequency you prefer, the score has to be 0"));
    assert!(!g(Check::TooOften).contains("below the frequency"));
    assert!(g(Check::TooRarely).contains("below the frequency you prefer, the score has to be 0 as well"));
    assert!(!g(Check::TooRarely).contains("above the frequency"));
    for c in [Check::Timing, Check::TooOften, Check::TooRarely] {
        assert!(g(c).contains("keeps recommendations from piling up"), "{c:?}");
    }
    assert!(g(Check::Preference).contains("miss out on something you would have liked"));
    assert!(g(Check::Timing).contains("does not come at a time you welcome deserves a lower score"));
    // "No Recommendation" is shown as the literal answer.
    let (_, user) = render(Check::Communication, &input(Suggestion::NoRec));
    assert!(user.contains("[Agent's Recommendation]\nNo Recommendation\n\n"), "{user}");
}

#[test]
fn the_action_reads_as_the_originals() {
    assert_eq!(
        action_line("John Lin", "cooking breakfast (frying eggs)", false),
        "John Lin is cooking breakfast (frying eggs)"
    );
    // The original's rule: "is" only when "ing" is in the first ten characters.
    assert_eq!(action_line("John Lin", "wake up and stretch", false), "John Lin wake up and stretch");
    assert_eq!(
        action_line("John Lin", "cooking breakfast (frying eggs)", true),
        "John Lin is walking, on the way to do [cooking breakfast (frying eggs)]"
    );
    let (_, user) = render(Check::Timing, &EvalInput { walking: true, ..input(Suggestion::NoRec) });
    assert!(user.contains("[Action]\nThursday February 13 -- 09:02:30 AM\nJohn Lin is walking, on the way to do [cooking breakfast (frying eggs)]\n"));
    // The memory entry: action and suggestion, no score.
    assert_eq!(
        memory_entry("John Lin", "cooking breakfast (frying eggs)", false, "Add spinach."),
        "John Lin's action: cooking breakfast (frying eggs)\nSuggestion: Add spinach."
    );
}

#[test]
fn all_mode_holds_every_rubric_section_and_check() {
    let p = profile();
    let inp = input(Suggestion::Text("Add some spinach to the eggs.".into()));
    let msgs = propersim::user::evaluator::ScoreAll { profile: &p, input: &inp, layout: Layout::Original }.messages();
    let user = &msgs[1].content;
    assert!(user.contains(&format!("[Memory]\n{}\n\n", MEMORY.trim_end())));
    for d in DIMENSIONS {
        assert!(user.contains(&format!("[{}]\n{}\n", d.replace('_', " "), p.criterion(d))), "{d}");
    }
    for c in Check::ALL {
        assert!(user.contains(&format!("{}:\n{}", c.key(), c.guidance())), "{c:?}");
    }
    assert!(user.contains("with all five keys") && user.contains(SCORE_FORMAT));
}

/// `rubric_first` holds the original layout's lines, reordered, plus one closing question; and
/// what it puts first is what a prefix cache can keep: the same at every moment of the day.
#[test]
fn rubric_first_reorders_the_same_content_so_only_the_moment_changes() {
    let spinach = input(Suggestion::Text("Add some spinach to the eggs.".into()));
    for check in Check::ALL {
        let (_, original) = render(check, &spinach);
        let (system, user) = render_in(check, &spinach, Layout::RubricFirst);
        assert!(system.contains("given before [Memory]"), "{system}");
        let (body, closing) = user.rsplit_once("\n\n").unwrap();
        assert_eq!(
            closing,
            format!(
                "Now grade [Agent's Recommendation] against [{}]: 0 or 1, as JSON in the format above.",
                check.section()
            )
        );
        let sorted = |t: &str| {
            let mut l: Vec<&str> = t.lines().collect();
            l.sort();
            l.into_iter().map(String::from).collect::<Vec<_>>()
        };
        assert_eq!(sorted(body), sorted(&original), "{check:?}: not the same lines");
        // The check's own part comes before the moment.
        let rubric = user.find(&format!("[{}]\n", check.section())).unwrap();
        let examples = user.rfind("Example ").unwrap();
        let memory = user.find("\n\n[Memory]\n").unwrap();
        assert!(rubric < examples && examples < memory, "{user}");

        // Another moment, another candidate: everything before [Memory] is unchanged.
        let later = EvalInput {
            time: "Thursday February 13 -- 09:05:00 AM".into(),
            action: "washing dishes".into(),
            memory: format!("{MEMORY}Thursday February 13 -- 09:02:30 AM\nJohn Lin's action: cooking breakfast (frying eggs)\nSuggestion: No Recommendation\n"),
            ..input(Suggestion::NoRec)
        };
        let (later_system, later_user) = render_in(check, &later, Layout::RubricFirst);
        assert_eq!(later_system, system);
        let head = &user[..memory];
        assert!(later_user.starts_with(head), "{check:?}");
        // The old memory is a prefix of the new one, so the cache serves it too.
        let old_memory_end = user.find("\n\n[Action]").unwrap();
        assert_eq!(later_user[..old_memory_end], user[..old_memory_end]);
    }
    // The all-checks prompt: the same rule.
    let p = profile();
    let all = |layout| propersim::user::evaluator::ScoreAll { profile: &p, input: &spinach, layout }.messages();
    let (original, first) = (all(Layout::Original)[1].content.clone(), all(Layout::RubricFirst)[1].content.clone());
    let at = |t: &str, s: &str| t.find(s).unwrap();
    assert!(at(&first, "[Checks]") < at(&first, "\n\n[Memory]\n"));
    assert!(at(&original, "[Checks]") > at(&original, "\n\n[Memory]\n"));
}
