//! `--chmod` for COPY and ADD: octal (`0755`) or symbolic (`u+x,go-w`, `a=rX`), applied to
//! each copied file the way chmod(1) applies it (without a umask, as BuildKit does).

/// One `who op perms` step, compiled to bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ModeOp {
    /// `+`, `-` or `=`.
    op: u8,
    /// The permission bits of the classes named (`who`), for `=` to clear.
    class_mask: u32,
    /// The bits to add, remove or set.
    bits: u32,
    /// `X`: execute for the classes named, if the file is a directory or already has an
    /// execute bit.
    cond_exec: u32,
}

const MAX_OPS: usize = 12;

/// A parsed `--chmod` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModeSpec {
    /// Every file and directory gets exactly this mode.
    Octal(u32),
    /// chmod(1)'s symbolic form, applied to each file's own mode.
    Symbolic { ops: [ModeOp; MAX_OPS], len: usize },
}

impl ModeSpec {
    /// Parses what `parser::flags::parse_chmod` accepted (after expansion).
    pub(crate) fn parse(v: &str) -> Result<ModeSpec, String> {
        match parser::flags::parse_chmod(v)? {
            parser::Chmod::Octal(m) => Ok(ModeSpec::Octal(m)),
            parser::Chmod::Symbolic(s) => {
                let mut ops = [ModeOp::default(); MAX_OPS];
                let mut len = 0;
                for clause in s.split(',') {
                    let who_end = clause.find(['+', '-', '=']).unwrap_or(clause.len());
                    let who = &clause[..who_end];
                    let mut class_mask = 0;
                    for c in who.chars() {
                        class_mask |= match c {
                            'u' => 0o4700,
                            'g' => 0o2070,
                            'o' => 0o1007,
                            _ => 0o7777,
                        };
                    }
                    if who.is_empty() {
                        class_mask = 0o7777;
                    }
                    // Each operator with the permissions that follow it.
                    let rest = &clause[who_end..];
                    let mut i = 0;
                    let b = rest.as_bytes();
                    while i < b.len() {
                        let op = b[i];
                        i += 1;
                        let (mut bits, mut cond_exec) = (0u32, 0u32);
                        while i < b.len() && !b"+-=".contains(&b[i]) {
                            match b[i] {
                                b'r' => bits |= 0o444,
                                b'w' => bits |= 0o222,
                                b'x' => bits |= 0o111,
                                b'X' => cond_exec |= 0o111,
                                b's' => bits |= 0o6000,
                                b't' => bits |= 0o1000,
                                c => {
                                    return Err(format!(
                                        "invalid chmod parameter {v}: {:?}",
                                        c as char
                                    ));
                                }
                            }
                            i += 1;
                        }
                        if len == MAX_OPS {
                            return Err(format!("invalid chmod parameter {v}: too many clauses"));
                        }
                        ops[len] = ModeOp {
                            op,
                            class_mask: class_mask & 0o777 | (class_mask & 0o7000),
                            bits: bits & class_mask,
                            cond_exec: cond_exec & class_mask,
                        };
                        len += 1;
                    }
                }
                Ok(ModeSpec::Symbolic { ops, len })
            }
        }
    }

    /// The mode a file of mode `old` gets.
    pub(crate) fn apply(&self, old: u32, is_dir: bool) -> u32 {
        match self {
            ModeSpec::Octal(m) => *m,
            ModeSpec::Symbolic { ops, len } => {
                let mut mode = old & 0o7777;
                for o in &ops[..*len] {
                    let exec = if is_dir || mode & 0o111 != 0 {
                        o.cond_exec
                    } else {
                        0
                    };
                    let bits = o.bits | exec;
                    mode = match o.op {
                        b'+' => mode | bits,
                        b'-' => mode & !bits,
                        _ => (mode & !(o.class_mask & 0o777)) | bits,
                    };
                }
                mode
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(v: &str, old: u32, dir: bool) -> u32 {
        ModeSpec::parse(v).unwrap().apply(old, dir)
    }

    #[test]
    fn symbolic_modes_follow_chmod() {
        assert_eq!(sym("u+x", 0o644, false), 0o744);
        assert_eq!(sym("go-w", 0o666, false), 0o644);
        assert_eq!(sym("a=r", 0o755, false), 0o444);
        assert_eq!(sym("=r", 0o755, false), 0o444);
        assert_eq!(sym("u=rwx,g=rx,o=", 0o600, false), 0o750);
        assert_eq!(sym("a+X", 0o644, false), 0o644);
        assert_eq!(sym("a+X", 0o744, false), 0o755);
        assert_eq!(sym("a+X", 0o644, true), 0o755);
        assert_eq!(sym("u+s,+t", 0o755, false), 0o5755);
        assert_eq!(sym("o-rwx", 0o777, true), 0o770);
        assert_eq!(sym("u+x-w", 0o644, false), 0o544);
    }

    #[test]
    fn octal_is_absolute() {
        assert_eq!(ModeSpec::parse("0640").unwrap().apply(0o777, true), 0o640);
        assert!(ModeSpec::parse("u+q").is_err());
    }
}
