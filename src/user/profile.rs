//! The user persona as the seed describes it (`scratch.json`), and its evaluation rubric.
//!
//! `scratch.json` is kept whole as an ordered map so a save writes back every original key
//! (52 for the ProPerSim seeds); the fields the engine reads are typed accessors.

use std::path::Path;

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The four rubric dimensions, with the key names of `criteria` in the seed.
pub const DIMENSIONS: [&str; 4] = ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety"];

/// `scratch.json` as an ordered map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(transparent)]
pub struct Scratch(pub IndexMap<String, Value>);

impl Scratch {
    pub fn load(path: &Path) -> Result<Scratch> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
    pub fn str(&self, key: &str) -> String {
        match self.0.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    }
    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.0.insert(key.to_string(), v.into());
    }
    pub fn u64(&self, key: &str, default: u64) -> u64 {
        self.0.get(key).and_then(Value::as_u64).unwrap_or(default)
    }
}

/// What prompts need to know about the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub first_name: String,
    pub age: String,
    pub traits: String,
    pub background: String,
    pub interests: String,
    pub lifestyle: String,
    pub goals: String,
    pub daily_plan_req: String,
    pub living_area: String,
    /// Rubric text per dimension (keys of [`DIMENSIONS`]).
    pub criteria: IndexMap<String, String>,
}

impl Profile {
    pub fn from_scratch(s: &Scratch) -> Profile {
        let mut criteria = IndexMap::new();
        if let Some(Value::Object(m)) = s.0.get("criteria") {
            for (k, v) in m {
                criteria.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
        let name = s.str("name");
        let first = s.str("first_name");
        Profile {
            first_name: if first.is_empty() { name.split_whitespace().next().unwrap_or("").to_string() } else { first },
            name,
            age: s.str("age"),
            traits: s.str("big_five_personality_traits"),
            background: s.str("background"),
            interests: s.str("current_interests"),
            lifestyle: s.str("lifestyle"),
            goals: s.str("long_term_goals"),
            daily_plan_req: s.str("daily_plan_req"),
            living_area: s.str("living_area"),
            criteria,
        }
    }

    /// A compact identity block used at the top of the user's prompts.
    pub fn identity(&self) -> String {
        format!(
            "Name: {}\nAge: {}\nPersonality (Big Five): {}\nBackground: {}\nInterests: {}\nLifestyle: {}\nLong-term goals: {}\nPlan requirements for today: {}",
            self.name, self.age, self.traits, self.background, self.interests, self.lifestyle, self.goals, self.daily_plan_req
        )
    }

    pub fn criterion(&self, dim: &str) -> &str {
        self.criteria.get(dim).map(String::as_str).unwrap_or("")
    }

    /// The rubric as one block (the assistant gets this when `persona_given`).
    pub fn rubric_text(&self) -> String {
        DIMENSIONS
            .iter()
            .map(|d| format!("{}: {}", d.replace('_', " "), self.criterion(d)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Lower-cased words of four letters or more, minus a few fillers.
pub fn content_words(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "john",
        "with",
        "that",
        "this",
        "from",
        "your",
        "have",
        "will",
        "into",
        "typically",
        "enjoys",
        "their",
        "them",
        "they",
        "about",
        "like",
        "some",
        "more",
        "while",
        "when",
        "each",
        "time",
        "hour",
        "hours",
    ];
    let mut out: Vec<String> = text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| w.len() >= 4)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect();
    out.sort();
    out.dedup();
    out
}
