//! One assistant turn: build the prompt, generate the candidates, have the user judge them
//! (concurrently), pick what is shown, and form the preference pair.

use anyhow::Result;
use chrono::{NaiveDateTime, Timelike};
use futures::future::try_join_all;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::assistant::memory::TOP_K;
use crate::assistant::prompt;
use crate::assistant::records::{InteractionRecord, PairDetails, PreferencePair};
use crate::assistant::suggest::{Answer, Suggest};
use crate::assistant::AssistantMemory;
use crate::clock::{fmt_curr_time, fmt_prompt_time};
use crate::config::SimSettings;
use crate::llm::{Llm, Message};
use crate::memory::structured::Block;
use crate::memory::summarize::Summarize;
use crate::memory::StructuredMemory;
use crate::suggestion::Suggestion;
use crate::user::evaluator::{judge, EvalInput, Judgement, Revise};
use crate::user::profile::Profile;

/// Everything the turn needs to know about the moment.
pub struct Moment<'a> {
    pub step: u64,
    pub now: NaiveDateTime,
    pub user_name: &'a str,
    pub assistant_name: &'a str,
    pub profile: &'a Profile,
    /// The user's current action (a decomposed block's subtask alone), as the assistant sees it.
    pub action: &'a str,
    /// The original's `act_description`, `"task (subtask)"`: what the evaluator sees, and the
    /// assistant's retrieval focal point.
    pub act_description: &'a str,
    pub walking: bool,
}

pub struct TurnResult {
    /// What memory and the movement file call the user's action (`walking` when walking).
    pub user_action: String,
    pub shown: Answer,
    pub shown_judgement: Judgement,
    pub record: InteractionRecord,
    pub pair: Option<PreferencePair>,
    /// The user prompt the assistant saw (the tests read what memory it showed).
    pub prompt_user: String,
}

pub async fn turn(
    llm: &Llm,
    s: &SimSettings,
    m: &Moment<'_>,
    amem: &AssistantMemory,
    emem: &StructuredMemory,
    rng: &mut ChaCha8Rng,
) -> Result<TurnResult> {
    let user_action = if m.walking { "walking".to_string() } else { m.action.to_string() };
    let time = fmt_prompt_time(m.now);

    // Prompt. With retrieval: the summaries, this hour's interactions, the past ones most similar
    // to the moment (none when the persona is given: the original's `n_count = 0`) and the most
    // recent ones. Without: only the summaries, the running hour summarized once it has more
    // than 4 interactions (the original's `wo_mem_suggest`).
    let memory = if s.memory_retrieval {
        let k = if s.persona_given { 0 } else { TOP_K };
        let retrieved = if k > 0 {
            let focal = llm.embed(&format!("{} is {}.", m.user_name, m.act_description)).await?;
            amem.retrieve(&focal, k)
        } else {
            Vec::new()
        };
        amem.render(&retrieved, true)
    } else {
        let running = if amem.running_hour_summarized() {
            let hour = &amem.structured.hour;
            let entries: Vec<String> = hour.iter().map(|i| i.text.clone()).collect();
            let summary = llm
                .run(&Summarize {
                    viewpoint: "the assistant",
                    user_name: m.user_name,
                    span: "hour",
                    entries: &entries,
                    with_scores: s.memory_level.score_aware_summaries(),
                })
                .await?
                .value;
            let first = hour[0].time;
            Some(Block {
                from: first.with_minute(0).and_then(|t| t.with_second(0)).unwrap_or(first),
                to: m.now,
                recommendations: hour.iter().filter(|i| i.recommended).count(),
                summary,
            })
        } else {
            None
        };
        amem.render_summaries(running)
    };
    let rubric = s.persona_given.then(|| m.profile.rubric_text());
    let system = prompt::system(m.assistant_name, m.user_name, s.reason_mode, rubric.as_deref());
    let user = prompt::user(&memory, &time, m.user_name, &user_action, s.reason_mode);

    // Candidates. With ranking the first may be forced to "No Recommendation".
    let n = if s.ranking { 2 } else { 1 };
    let forced: Vec<bool> = (0..n)
        .map(|i| i == 0 && s.ranking && !s.user_revision && rng.gen_bool(s.forced_norec_ratio.probability()))
        .collect();
    let tasks: Vec<Suggest> =
        (0..n as u32).map(|i| Suggest { system: &system, user: &user, mode: s.reason_mode, sample: i }).collect();
    let generated = try_join_all(tasks.iter().zip(&forced).filter(|(_, f)| !**f).map(|(t, _)| llm.run(t))).await?;
    let mut gen_iter = generated.into_iter();
    let mut answers: Vec<Answer> = forced
        .iter()
        .map(|f| {
            if *f {
                Answer { suggestion: Suggestion::NoRec, reason: None }
            } else {
                gen_iter.next().expect("one per unforced").value
            }
        })
        .collect();

    let recs_last_hour = emem.recommendations_within(m.now, 60);
    let memory = emem.render_with_recent();
    let input = |a: &Answer| EvalInput {
        time: time.clone(),
        action: m.act_description.to_string(),
        walking: m.walking,
        suggestion: a.suggestion.clone(),
        memory: memory.clone(),
        recs_last_hour,
    };

    // With user revision: the user rewrites the first candidate unless it was perfect, and the
    // pair is the suggestion against the revision.
    let mut judgements: Vec<Judgement>;
    if s.ranking && s.user_revision {
        let first = judge(llm, (s.evaluation, s.evaluator_layout), m.profile, &input(&answers[0])).await?;
        let second = if first.total >= 4.0 {
            answers[1].clone()
        } else {
            let inp = input(&answers[0]);
            Answer {
                suggestion: llm.run(&Revise { profile: m.profile, input: &inp, judgement: &first }).await?.value,
                reason: None,
            }
        };
        answers[1] = second;
        let j2 = judge(llm, (s.evaluation, s.evaluator_layout), m.profile, &input(&answers[1])).await?;
        judgements = vec![first, j2];
    } else if n == 2 && near_identical(&answers[0], &answers[1]) {
        // As the original: the first candidate is judged only when it differs from the second by
        // more than 3 edits; otherwise it takes the second's judgement, so near-copies never
        // form a pair whose preference is only the evaluator's noise.
        let second = judge(llm, (s.evaluation, s.evaluator_layout), m.profile, &input(&answers[1])).await?;
        judgements = vec![second.clone(), second];
    } else {
        let inputs: Vec<EvalInput> = answers.iter().map(input).collect();
        judgements =
            try_join_all(inputs.iter().map(|i| judge(llm, (s.evaluation, s.evaluator_layout), m.profile, i))).await?;
    }

    // The original shows (and logs) the second candidate under ranking, the first under revision.
    let shown = if s.ranking && !s.user_revision { 1 } else { 0 };
    let pair = if n == 2 && judgements[0].total != judgements[1].total {
        let (w, l) = if judgements[0].total > judgements[1].total { (0, 1) } else { (1, 0) };
        let answer = |i: usize| Message::assistant(answers[i].suggestion.to_json_answer(None));
        // The training prompt never holds the rubric: the original built its pairs with the
        // system prompt of the reason mode, not the persona-given one it generated with.
        let train_system = if s.persona_given {
            prompt::system(m.assistant_name, m.user_name, s.reason_mode, None)
        } else {
            system.clone()
        };
        let details = PairDetails {
            chosen_score: judgements[w].total,
            rejected_score: judgements[l].total,
            chosen_reason: judgements[w].reason.clone(),
            rejected_reason: judgements[l].reason.clone(),
            step: m.step,
            curr_time: fmt_curr_time(m.now),
        };
        Some(details.pair(
            vec![Message::system(train_system), Message::user(user.clone())],
            vec![answer(w)],
            vec![answer(l)],
        ))
    } else {
        None
    };
    let record = InteractionRecord {
        step: m.step,
        curr_time: fmt_curr_time(m.now),
        date: m.now.format("%B %d").to_string(),
        action: user_action.clone(),
        candidates: answers.iter().map(|a| a.suggestion.text().to_string()).collect(),
        scores: judgements.iter().map(|j| j.total).collect(),
        reasons: judgements.iter().map(|j| j.reason.clone()).collect(),
        shown,
        no_rec: answers.iter().map(|a| a.suggestion.is_norec()).collect(),
        forced,
        dimensions: judgements.iter().map(|j| j.dimensions.clone()).collect(),
    };
    judgements.truncate(shown + 1);
    Ok(TurnResult {
        user_action,
        shown: answers.swap_remove(shown),
        shown_judgement: judgements.swap_remove(shown),
        record,
        pair,
        prompt_user: user,
    })
}

/// The original's test for judging both candidates: their suggestions are at most 3 edits
/// (Levenshtein) apart.
fn near_identical(a: &Answer, b: &Answer) -> bool {
    strsim::levenshtein(a.suggestion.text(), b.suggestion.text()) <= 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::memory::Record;
    use crate::config::{Config, ProviderKind};
    use crate::llm::scripted::scripted_embedding;
    use crate::memory::Interaction;
    use crate::user::profile::{Scratch, DIMENSIONS};
    use chrono::NaiveDate;
    use rand::SeedableRng;

    const RUBRIC_MARK: &str = "only-ever-about-sourdough";

    fn scripted_llm() -> Llm {
        let mut cfg = Config::default();
        cfg.set_all_providers(ProviderKind::Scripted);
        Llm::from_config(&cfg).unwrap()
    }

    fn profile() -> Profile {
        let mut sc = Scratch(Default::default());
        sc.set("name", "John Lin");
        let crit: serde_json::Map<String, serde_json::Value> =
            DIMENSIONS.iter().map(|d| (d.to_string(), format!("{d}: {RUBRIC_MARK}").into())).collect();
        sc.set("criteria", serde_json::Value::Object(crit));
        Profile::from_scratch(&sc)
    }

    fn at(h: u32, m: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, 2, 13).unwrap().and_hms_opt(h, m, 0).unwrap()
    }

    /// One old record about the current action, then ten unrelated later ones.
    fn memory() -> AssistantMemory {
        let mut amem = AssistantMemory::default();
        let mut push = |step: u64, t: NaiveDateTime, text: &str| {
            amem.push(Record {
                step,
                time: t,
                text: text.into(),
                recommended: true,
                embedding: scripted_embedding(text),
            })
        };
        push(0, at(6, 0), "John Lin's action: baking sourdough bread");
        for i in 1..=10 {
            push(i, at(7, 5 * i as u32), &format!("John Lin's action: answering email number {i}"));
        }
        amem
    }

    /// One turn on the scripted brain, and how many model calls it made.
    async fn run_counting(s: &SimSettings, amem: &AssistantMemory, seed: u64) -> (TurnResult, u64) {
        let llm = scripted_llm();
        let p = profile();
        // The seed moves the moment by minutes, so the scripted brain's answers vary with it.
        let m = Moment {
            step: 100,
            now: at(9, (seed % 50) as u32),
            user_name: "John Lin",
            assistant_name: "Eddy Lin",
            profile: &p,
            action: "baking sourdough bread",
            act_description: "cooking (baking sourdough bread)",
            walking: false,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let r = turn(&llm, s, &m, amem, &StructuredMemory::new(3), &mut rng).await.unwrap();
        (r, llm.calls())
    }

    async fn run(s: &SimSettings, amem: &AssistantMemory, seed: u64) -> TurnResult {
        run_counting(s, amem, seed).await.0
    }

    #[tokio::test]
    async fn persona_given_retrieves_no_memories_and_its_pairs_hold_no_rubric() {
        let amem = memory();
        let old = fmt_prompt_time(at(6, 0));
        let plain = run(&SimSettings::default(), &amem, 1).await;
        assert!(plain.prompt_user.contains(&old), "retrieval finds the old, similar record:\n{}", plain.prompt_user);
        let s = SimSettings { persona_given: true, ..SimSettings::default() };
        let given = run(&s, &amem, 1).await;
        assert!(!given.prompt_user.contains(&old), "no retrieval with the persona given:\n{}", given.prompt_user);
        // The most recent interactions are still shown.
        assert!(given.prompt_user.contains("answering email number 10"), "{}", given.prompt_user);

        // A pair's prompt is the plain system prompt (the original's), without the rubric the
        // candidates were generated with.
        let mut pairs = 0;
        for seed in 0..40 {
            if let Some(p) = run(&s, &amem, seed).await.pair {
                assert_eq!(p.prompt[0].role, "system");
                assert!(!p.prompt[0].content.contains(RUBRIC_MARK), "{}", p.prompt[0].content);
                assert_eq!(p.prompt[0].content, prompt::system("Eddy Lin", "John Lin", s.reason_mode, None));
                pairs += 1;
            }
        }
        assert!(pairs > 0, "some step formed a pair");
        assert!(
            prompt::system("Eddy Lin", "John Lin", s.reason_mode, Some(&profile().rubric_text())).contains(RUBRIC_MARK)
        );
    }

    #[tokio::test]
    async fn without_retrieval_the_prompt_holds_summaries_only() {
        let mut amem = memory();
        let s = SimSettings { memory_retrieval: false, ..SimSettings::default() };
        // Three interactions this hour: neither shown raw nor summarized.
        for i in 0..3u64 {
            amem.structured.hour.push(Interaction {
                step: 90 + i,
                time: at(8, 30 + 5 * i as u32),
                text: format!("John Lin's action: polishing shoes, pass {i}"),
                recommended: i == 1,
                score: Some(2.0),
            });
        }
        let r = run(&s, &amem, 3).await;
        assert!(!r.prompt_user.contains("polishing shoes"), "{}", r.prompt_user);
        assert!(!r.prompt_user.contains("answering email"), "no recent interactions: {}", r.prompt_user);
        assert!(!r.prompt_user.contains("SUMMARY"), "{}", r.prompt_user);
        // Past four: the running hour is summarized (the scripted summary counts its entries).
        for i in 3..6u64 {
            amem.structured.hour.push(Interaction {
                step: 90 + i,
                time: at(8, 30 + 5 * i as u32),
                text: format!("John Lin's action: polishing shoes, pass {i}"),
                recommended: false,
                score: Some(2.0),
            });
        }
        let r = run(&s, &amem, 3).await;
        assert!(r.prompt_user.contains("SUMMARY: 6 interactions"), "{}", r.prompt_user);
        assert!(r.prompt_user.contains("Number of recommendations: 1"), "{}", r.prompt_user);
        assert!(!r.prompt_user.contains("pass 5"), "no raw events: {}", r.prompt_user);
        assert!(!r.prompt_user.contains("This hour so far"), "{}", r.prompt_user);
    }

    #[tokio::test]
    async fn near_identical_candidates_share_one_judgement_and_form_no_pair() {
        let amem = memory();
        let s = SimSettings { forced_norec_ratio: crate::config::NoRecRatio::P100, ..SimSettings::default() };
        let (mut copied, mut judged_apart) = (Vec::new(), Vec::new());
        for seed in 0..40 {
            let (r, calls) = run_counting(&s, &amem, seed).await;
            let c = &r.record.candidates;
            assert_eq!(c[0], "No Recommendation", "the first candidate is forced");
            if strsim::levenshtein(&c[0], &c[1]) <= 3 {
                assert_eq!(r.record.scores[0], r.record.scores[1]);
                assert_eq!(r.record.reasons[0], r.record.reasons[1]);
                assert!(r.pair.is_none());
                copied.push(calls);
            } else {
                judged_apart.push(calls);
            }
        }
        assert!(!copied.is_empty() && !judged_apart.is_empty(), "{copied:?} copied, {judged_apart:?} judged apart");
        // The copied steps skip the first candidate's five rubric checks.
        assert!(copied.iter().all(|c| *c + 5 == judged_apart[0]), "{copied:?} vs {judged_apart:?}");
        assert!(judged_apart.iter().all(|c| *c == judged_apart[0]), "{judged_apart:?}");
    }
}
