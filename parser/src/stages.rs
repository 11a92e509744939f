//! Stages: instructions grouped under their FROM, with the global ARGs before the first FROM,
//! and the scoping rules the builder applies.
//!
//! Scoping, as BuildKit defines it: ARGs before the first FROM are global and only usable in
//! FROM lines (and, redeclared without a value inside a stage, take the global value); an ARG
//! inside a stage is visible from its line to the end of that stage; ENV values override
//! ARGs of the same name; each instruction expands only the words the Dockerfile reference
//! lists as supporting variables (see `builder::dispatch`).

use crate::ast::{Document, Node};
use crate::error::{ParseError, Position};
use crate::instruction::{ArgDecl, From, Instruction, instruction};

/// One build stage (borrowing its nodes from the [`Document`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage<'a> {
    /// Index in the file (0-based).
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The FROM instruction.
    pub from: From,
    /// The FROM node (position, text).
    pub from_node: &'a Node,
    /// The stage's other instructions with their nodes.
    pub instructions: Vec<(&'a Node, Instruction)>,
}

/// Types every node and groups them into stages; returns the global ARGs and the stages.
pub fn stages(doc: &Document) -> Result<(Vec<ArgDecl>, Vec<Stage<'_>>), ParseError> {
    let mut globals = Vec::new();
    let mut out: Vec<Stage<'_>> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for node in &doc.nodes {
        let ins = instruction(node)?;
        match (ins, out.last_mut()) {
            (Instruction::From(from), _) => {
                if let Some(name) = &from.alias
                    && !names.insert(name.clone())
                {
                    return Err(ParseError::new(
                        node.start,
                        format!("duplicate stage name {name:?}"),
                    ));
                }
                out.push(Stage {
                    index: out.len(),
                    name: from.alias.clone(),
                    from,
                    from_node: node,
                    instructions: Vec::new(),
                })
            }
            (Instruction::Arg(args), None) => globals.extend(args),
            (_, None) => {
                return Err(ParseError::new(
                    node.start,
                    format!(
                        "{} before the first FROM (only ARG may come first)",
                        node.keyword
                    ),
                ));
            }
            (ins, Some(stage)) => stage.instructions.push((node, ins)),
        }
    }
    if out.is_empty() {
        return Err(ParseError::new(
            Position { line: 1, col: 1 },
            "no build stage in the file: it has no FROM instruction",
        ));
    }
    Ok((globals, out))
}
