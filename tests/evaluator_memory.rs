//! The user's evaluation memory through the engine, scripted brain (issue 15): it holds what
//! the user did ("task (subtask)") and what the assistant suggested, never a score; the last
//! four recommendations stay in view across hour boundaries; the saved `evaluation_memory/`
//! holds recommendations only, as the original's.

mod common;

use chrono::Timelike;
use propersim::config::ProviderKind;
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_memory_holds_no_scores_and_keeps_recent_recommendations() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::base_config(&fs, tmp.path(), "evalmem");
    cfg.set_all_providers(ProviderKind::Scripted);
    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Off).unwrap();

    let mut carried = 0;
    // Until 14:00: the user wakes, several awake hours pass and close.
    while engine.next_step() < 14 * 24 {
        engine.write_next_environment().unwrap();
        engine.step().await.unwrap();
        let ev = &engine.evaluator();
        let view = ev.render_with_recent();
        let lower = view.to_lowercase();
        assert!(
            !lower.contains("score") && !view.contains("/4"),
            "step {}: the user's memory shows a score:\n{view}",
            engine.next_step() - 1
        );
        // The first evaluation of a new hour, after an hour with recommendations: they are
        // still in view in full.
        if ev.hour.len() == 1 && ev.hourly.last().is_some_and(|b| b.recommendations > 0) {
            let start = ev.hour[0].time.with_minute(0).unwrap().with_second(0).unwrap();
            assert!(ev.recent.iter().any(|i| i.time < start), "step {}: nothing carried over", engine.next_step() - 1);
            assert!(ev.recent.iter().all(|i| i.recommended) && ev.recent.len() <= 4);
            let tail = view.split("Latest recommendations before this hour:\n").nth(1).expect("listed");
            for i in ev.recent.iter().filter(|i| i.time < start) {
                assert!(tail.contains(&i.text), "{} missing:\n{view}", i.text);
            }
            carried += 1;
        }
    }
    assert!(carried >= 2, "hours with recommendations closed only {carried} times");

    let log = std::fs::read_to_string(tmp.path().join("storage/evalmem/state/evaluated_today.jsonl")).unwrap();
    assert!(log.lines().count() > 50);
    for line in log.lines() {
        assert!(!line.to_lowercase().contains("score"), "the evaluation memory log holds a score: {line}");
    }
    // The action as the original's `act_description`: "task (subtask)" in decomposed blocks.
    let texts: Vec<&str> = engine.evaluated_today().iter().map(|e| e.interaction.text.as_str()).collect();
    assert!(texts.iter().all(|t| t.starts_with("John Lin's action: ") && t.contains("\nSuggestion: ")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.lines().next().unwrap().ends_with(')') && t.contains(" (")),
        "no task (subtask): {texts:?}"
    );

    engine.save_personas().unwrap();
    let nodes = std::fs::read_to_string(
        tmp.path().join("storage/evalmem/personas/John Lin/bootstrap_memory/evaluation_memory/nodes.json"),
    )
    .unwrap();
    assert!(!nodes.to_lowercase().contains("score"));
    assert!(!nodes.contains("No Recommendation"), "no-rec moments are not nodes of the user's evaluation memory");
    let n = serde_json::from_str::<serde_json::Value>(&nodes).unwrap().as_object().unwrap().len();
    assert_eq!(n, engine.evaluated_today().iter().filter(|e| e.interaction.recommended).count());
}
