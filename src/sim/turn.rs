//! One assistant turn: build the prompt, generate the candidates, have the user judge them
//! (concurrently), pick what is shown, and form the preference pair.

use anyhow::Result;
use chrono::NaiveDateTime;
use futures::future::try_join_all;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::assistant::prompt;
use crate::assistant::records::{InteractionRecord, PreferencePair};
use crate::assistant::suggest::{Answer, Suggest};
use crate::assistant::AssistantMemory;
use crate::config::SimSettings;
use crate::llm::{Llm, Message};
use crate::memory::StructuredMemory;
use crate::sim::clock::{fmt_curr_time, fmt_prompt_time};
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
    /// The prompt text the assistant saw (for token counts).
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

    // Prompt: memory (+ retrieval of similar past interactions), then the moment.
    let retrieved = if s.memory_retrieval {
        let focal = llm.embed(&format!("{} is {}.", m.user_name, m.act_description)).await?;
        amem.retrieve(&focal, 3)
    } else {
        Vec::new()
    };
    let memory = amem.render(&retrieved, s.memory_retrieval);
    let rubric = s.persona_given.then(|| m.profile.rubric_text());
    let system = prompt::system(m.assistant_name, m.user_name, s.reason_mode, rubric.as_deref());
    let user = prompt::user(&memory, &time, m.user_name, &user_action, s.reason_mode);

    // Candidates. With ranking the first may be forced to "No Recommendation".
    let n = if s.ranking { 2 } else { 1 };
    let forced: Vec<bool> = (0..n)
        .map(|i| i == 0 && s.ranking && !s.user_revision && rng.gen_bool(s.forced_norec_ratio.probability()))
        .collect();
    let tasks: Vec<Suggest> = (0..n as u32)
        .map(|i| Suggest { system: &system, user: &user, mode: s.reason_mode, sample: i, action: &user_action })
        .collect();
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
        let first = judge(llm, s.evaluation, m.profile, &input(&answers[0])).await?;
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
        let j2 = judge(llm, s.evaluation, m.profile, &input(&answers[1])).await?;
        judgements = vec![first, j2];
    } else {
        let inputs: Vec<EvalInput> = answers.iter().map(input).collect();
        judgements = try_join_all(inputs.iter().map(|i| judge(llm, s.evaluation, m.profile, i))).await?;
    }

    // The original shows (and logs) the second candidate under ranking, the first under revision.
    let shown = if s.ranking && !s.user_revision { 1 } else { 0 };
    let pair = if n == 2 && judgements[0].total != judgements[1].total {
        let (w, l) = if judgements[0].total > judgements[1].total { (0, 1) } else { (1, 0) };
        let answer = |i: usize| Message::assistant(answers[i].suggestion.to_json_answer(None));
        Some(PreferencePair {
            prompt: vec![Message::system(system.clone()), Message::user(user.clone())],
            chosen: vec![answer(w)],
            rejected: vec![answer(l)],
            chosen_score: judgements[w].total,
            rejected_score: judgements[l].total,
            chosen_reason: judgements[w].reason.clone(),
            rejected_reason: judgements[l].reason.clone(),
            step: m.step,
            curr_time: fmt_curr_time(m.now),
        })
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
