//! Associative memory in the original `nodes.json` / `embeddings.json` / `kw_strength.json`
//! shapes. Nodes are events the user lived and the day's plan; embeddings are stored by text.

use std::path::Path;

use anyhow::Result;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::storage::write_json_py;

/// One memory node, field for field as the original saves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub node_count: u64,
    pub type_count: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub depth: u64,
    pub created: String,
    pub expiration: Option<String>,
    pub subject: String,
    pub predicate: String,
    pub object: String,
    pub description: String,
    pub embedding_key: String,
    pub poignancy: u32,
    pub keywords: Vec<String>,
    pub filling: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AssociativeMemory {
    /// Oldest first; saved newest first as `node_N`. Only ever appended to, so the engine keeps
    /// them in an append-only log rather than in its per-step checkpoint (older checkpoints that
    /// still carry them are read).
    #[serde(default, skip_serializing)]
    pub nodes: Vec<Node>,
    /// Text → vector. Left out of the engine checkpoint (see `skip`), saved with the persona.
    #[serde(skip)]
    pub embeddings: IndexMap<String, Vec<f32>>,
    pub kw_event: IndexMap<String, u64>,
    pub kw_thought: IndexMap<String, u64>,
}

impl AssociativeMemory {
    /// Load the original files (missing files mean an empty memory).
    pub fn load(dir: &Path) -> Result<AssociativeMemory> {
        let read = |name: &str| -> Result<Value> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(t) => Ok(serde_json::from_str(&t)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
                Err(e) => Err(e.into()),
            }
        };
        let mut m = AssociativeMemory::default();
        if let Value::Object(nodes) = read("nodes.json")? {
            let mut v: Vec<Node> = nodes.into_iter().filter_map(|(_, n)| serde_json::from_value(n).ok()).collect();
            v.sort_by_key(|n| n.node_count);
            m.nodes = v;
        }
        if let Value::Object(e) = read("embeddings.json")? {
            for (k, v) in e {
                if let Ok(vec) = serde_json::from_value::<Vec<f32>>(v) {
                    m.embeddings.insert(k, vec);
                }
            }
        }
        let kw = read("kw_strength.json")?;
        m.kw_event =
            serde_json::from_value(kw.get("kw_strength_event").cloned().unwrap_or(json!({}))).unwrap_or_default();
        m.kw_thought =
            serde_json::from_value(kw.get("kw_strength_thought").cloned().unwrap_or(json!({}))).unwrap_or_default();
        Ok(m)
    }

    /// Save the three files. `nodes.json` goes last: the original's loader looks each node's
    /// `embedding_key` up in `embeddings.json`, so a save cut short between two files must leave
    /// the vectors ahead of the nodes, never behind.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json_py(&dir.join("embeddings.json"), &self.embeddings)?;
        write_json_py(
            &dir.join("kw_strength.json"),
            &json!({"kw_strength_event": self.kw_event, "kw_strength_thought": self.kw_thought}),
        )?;
        let mut nodes = IndexMap::new();
        for n in self.nodes.iter().rev() {
            nodes.insert(format!("node_{}", n.node_count), n);
        }
        write_json_py(&dir.join("nodes.json"), &nodes)
    }

    /// Add an event or thought node.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        kind: &str,
        created: &str,
        expiration: Option<String>,
        spo: (&str, &str, &str),
        description: &str,
        poignancy: u32,
        keywords: Vec<String>,
        embedding: Option<Vec<f32>>,
    ) -> &Node {
        // The original counted the nodes of the kind; every node saved here or by the original
        // carries that count, so the last one of the kind gives it without a scan of all nodes
        // (an evaluation memory rebuilt at each day's end has thousands).
        let type_count = self.nodes.iter().rev().find(|n| n.kind == kind).map_or(0, |n| n.type_count) + 1;
        let kw_map = if kind == "thought" { &mut self.kw_thought } else { &mut self.kw_event };
        for k in &keywords {
            *kw_map.entry(k.to_lowercase()).or_insert(0) += 1;
        }
        if let Some(e) = embedding {
            self.embeddings.insert(description.to_string(), e);
        }
        self.nodes.push(Node {
            node_count: self.nodes.len() as u64 + 1,
            type_count,
            kind: kind.into(),
            depth: 0,
            created: created.into(),
            expiration,
            subject: spo.0.into(),
            predicate: spo.1.into(),
            object: spo.2.into(),
            description: description.into(),
            embedding_key: description.into(),
            poignancy,
            keywords,
            filling: Value::Null,
        });
        self.nodes.last().expect("just pushed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut m = AssociativeMemory::default();
        m.add(
            "event",
            "2025-02-13 08:00:00",
            None,
            ("Ana", "is", "cooking"),
            "Ana is cooking",
            3,
            vec!["cooking".into()],
            Some(vec![0.5, 0.5]),
        );
        m.add(
            "thought",
            "2025-02-13 00:00:00",
            Some("2025-03-15 00:00:00".into()),
            ("Ana", "plan", "Thursday"),
            "plan",
            5,
            vec!["plan".into()],
            None,
        );
        m.save(d.path()).unwrap();
        let back = AssociativeMemory::load(d.path()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.embeddings, m.embeddings);
        let text = std::fs::read_to_string(d.path().join("nodes.json")).unwrap();
        assert!(text.find("node_2").unwrap() < text.find("node_1").unwrap(), "newest first");
    }
}
