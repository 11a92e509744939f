//! The JSON rendering `kiln parse --json` prints (schema in the README).

use serde_json::{Value, json};

use crate::ast::Document;
use crate::error::ParseError;
use crate::stages::stages;

/// The document's stages and typed instructions as JSON.
pub fn document_json(doc: &Document) -> Result<Value, ParseError> {
    let (globals, stages) = stages(doc)?;
    let stages: Vec<Value> = stages
        .iter()
        .map(|s| {
            json!({
                "index": s.index,
                "name": s.name,
                "from": s.from,
                "line": s.from_node.start.line,
                "instructions": s.instructions.iter().map(|(n, i)| json!({
                    "line": n.start.line,
                    "column": n.start.col,
                    "end_line": n.end_line,
                    "original": n.original,
                    "flags": n.flags,
                    "instruction": i,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({
        "directives": {
            "escape": doc.directives.escape.to_string(),
            "syntax": doc.directives.syntax,
            "check": doc.directives.check,
        },
        "global_args": globals,
        "stages": stages,
        "warnings": doc.warnings.iter().map(|w| json!({"rule": w.rule, "message": w.message, "line": w.line})).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_stages_and_instructions() {
        let doc = crate::parse("ARG V=1\nFROM busybox AS b\nRUN --mount=type=cache,target=/c --network=none make\nCOPY --chmod=644 a /b\nHEALTHCHECK --interval=5s CMD true\nONBUILD RUN x\n").unwrap();
        let v = document_json(&doc).unwrap();
        assert_eq!(v["global_args"], json!([{"name": "V", "default": "1"}]));
        let s = &v["stages"][0];
        assert_eq!(s["name"], "b");
        assert_eq!(s["from"]["image"], "busybox");
        let run = &s["instructions"][0]["instruction"];
        assert_eq!(run["kind"], "RUN");
        assert_eq!(run["value"]["command"], json!({"shell": "make"}));
        assert_eq!(run["value"]["network"], "none");
        assert_eq!(run["value"]["mounts"][0]["kind"], "cache");
        assert_eq!(s["instructions"][1]["instruction"]["value"]["chmod"], "644");
        assert_eq!(
            s["instructions"][2]["instruction"]["value"]["interval"],
            5_000_000_000u64
        );
        assert_eq!(
            s["instructions"][3]["instruction"],
            json!({"kind": "ONBUILD", "value": "RUN x"})
        );
    }
}
