//! TEST/BENCHMARK BRAIN — not a model.
//!
//! The scripted brain's suggestions (`--provider scripted`, see [`crate::llm::scripted`]):
//! "No Recommendation" 45% of the time, otherwise one of ten canned ideas around the user's
//! action, which it reads from the prompt like a model would. Each candidate skips its index's
//! worth of draws first, so the candidates of one prompt differ.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::suggest::Suggest;
use crate::config::ReasonMode;
use crate::llm::scripted::ScriptedReply;
use crate::suggestion::NO_REC;

impl ScriptedReply for Suggest<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        for _ in 0..self.sample {
            rng.next_u64();
        }
        const IDEAS: &[&str] = &[
            "Take a two-minute stretch before you carry on with {a}.",
            "Put on a playlist you love while {a}.",
            "Drink a glass of water; you have been {a} for a while.",
            "Jot down one idea that came up while {a}.",
            "Open a window for some fresh air while {a}.",
            "Try a new seasonal decoration idea after {a}.",
            "Plan a themed dinner for friends once you finish {a}.",
            "Sketch a quick design idea when you pause {a}.",
            "Call a friend for a short chat after {a}.",
            "Set a timer so {a} doesn't eat the whole afternoon.",
        ];
        let s = if rng.gen_bool(0.45) {
            NO_REC.to_string()
        } else {
            IDEAS.choose(rng).expect("non-empty").replace("{a}", action_of(self.user))
        };
        match self.mode {
            ReasonMode::None => json!({ "Suggestion": s }).to_string(),
            ReasonMode::After => format!("{{\"Suggestion\": {}, \"Reason\": \"It suits the moment.\"}}", json!(s)),
            ReasonMode::Before => format!("{{\"Reason\": \"It suits the moment.\", \"Suggestion\": {}}}", json!(s)),
        }
    }
}

/// The user's action in an assistant user prompt ([`super::prompt::user`]): after the last
/// `[ACTION]` heading and the time, `"<name>'s action: <name> is <action>."`, then the answer
/// format. Exact whenever the action itself holds no `"\n[ACTION]\n"`; a prompt of another
/// shape gives the whole prompt.
fn action_of(user: &str) -> &str {
    let action = || {
        let (_, moment) = user.rsplit_once("\n[ACTION]\n")?;
        let (moment, _format) = moment.rsplit_once(".\n\nAnswer in the format ")?;
        let (_time, line) = moment.split_once('\n')?;
        let (name, said) = line.split_once("'s action: ")?;
        said.strip_prefix(name)?.strip_prefix(" is ")
    };
    action().unwrap_or(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::prompt;

    #[test]
    fn the_action_is_read_back_from_the_prompt() {
        let memory =
            "This hour so far:\nThursday February 13 -- 07:05:00 AM\n[ACTION]\nJohn Lin's action: John Lin is x.\n";
        for action in ["walking", "cooking breakfast", "reading. Then: a nap\nand more", "is is"] {
            for mode in [ReasonMode::None, ReasonMode::After, ReasonMode::Before] {
                let user = prompt::user(memory, "Thursday February 13 -- 07:10:00 AM", "John Lin", action, mode);
                assert_eq!(action_of(&user), action, "{user}");
            }
        }
        assert_eq!(action_of("no prompt of ours"), "no prompt of ours");
    }
}
