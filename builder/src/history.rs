//! The `created_by` text of image history entries, worded as BuildKit words them (Go's `%q`
//! and `%v` formatting included), so `kiln history` reads like `docker history`.

use parser::Instruction;

use crate::dispatch::ConfigState;

/// Go's `%q` of a `[]string`: `["a" "b c"]`.
pub(crate) fn go_quoted_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| parser::ast::go_quote(s)).collect();
    format!("[{}]", items.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b c]`.
pub(crate) fn go_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// `RUN |2 A=1 B=2 /bin/sh -c make # buildkit`: the stage's build args, then the argv.
pub(crate) fn run(args: &[(String, String)], argv: &[String]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !args.is_empty() {
        parts.push(format!("|{}", args.len()));
        parts.extend(args.iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(argv.iter().cloned());
    format!("RUN {} # buildkit", parts.join(" "))
}

/// `COPY src1 src2 /dest # buildkit` (ADD likewise); heredoc sources read `<<NAME`.
pub(crate) fn copy(keyword: &str, sources: &[String], dest: &str) -> String {
    format!("{keyword} {} {dest} # buildkit", sources.join(" "))
}

/// Go's `time.Duration.String()`: `1m30s`, `500ms`, `0s`.
pub(crate) fn go_duration(d: std::time::Duration) -> String {
    let ns = d.as_nanos();
    let trim = |x: f64| {
        let s = format!("{x:.9}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}\u{b5}s", trim(ns as f64 / 1e3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim(ns as f64 / 1e6));
    }
    let total_s = d.as_secs();
    let (h, m, s) = (total_s / 3600, (total_s % 3600) / 60, total_s % 60);
    let secs = trim(s as f64 + f64::from(d.subsec_nanos()) / 1e9);
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// Go's `%q` of an int: a rune literal (`'A'`, `'\x04'`).
fn go_rune(n: u32) -> String {
    match char::from_u32(n) {
        Some('\'') => r"'\''".into(),
        Some('\\') => r"'\\'".into(),
        Some(c) if (' '..='~').contains(&c) => format!("'{c}'"),
        _ if n < 0x80 => format!("'\\x{n:02x}'"),
        _ if n < 0x10000 => format!("'\\u{n:04x}'"),
        _ => format!("'\\U{n:08x}'"),
    }
}

/// `HEALTHCHECK &{["CMD-SHELL" "..."] "30s" "5s" "0s" '\x03'}`: Go's `%q` of the config.
fn healthcheck(h: &parser::Healthcheck) -> String {
    let (test, interval, timeout, start, retries) = match h {
        parser::Healthcheck::None => (vec!["NONE".to_string()], None, None, None, None),
        parser::Healthcheck::Cmd {
            test,
            interval,
            timeout,
            start_period,
            retries,
            ..
        } => (test.clone(), *interval, *timeout, *start_period, *retries),
    };
    let q = |d: Option<std::time::Duration>| format!("\"{}\"", go_duration(d.unwrap_or_default()));
    format!(
        "HEALTHCHECK &{{{} {} {} {} {}}}",
        go_quoted_list(&test),
        q(interval),
        q(timeout),
        q(start),
        go_rune(retries.unwrap_or(0))
    )
}

/// The text for a config-only instruction, from the config before and after it.
pub(crate) fn config(
    ins: &Instruction,
    before: &ConfigState,
    after: &ConfigState,
    lexer: &parser::Lexer,
    original: &str,
) -> String {
    let c = &after.image.config;
    match ins {
        Instruction::Env(pairs) | Instruction::Label(pairs) => {
            let keyword = if matches!(ins, Instruction::Env(_)) {
                "ENV"
            } else {
                "LABEL"
            };
            let values: Vec<String> = crate::dispatch::expand_pairs(before, pairs, lexer)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{keyword} {}", values.join(" "))
        }
        Instruction::Cmd(_) => format!(
            "CMD {}",
            go_quoted_list(c.cmd.as_deref().unwrap_or_default())
        ),
        Instruction::Entrypoint(_) => format!(
            "ENTRYPOINT {}",
            go_quoted_list(c.entrypoint.as_deref().unwrap_or_default())
        ),
        Instruction::Shell(v) => format!("SHELL {}", go_list(v)),
        Instruction::Workdir(_) => format!("WORKDIR {}", c.working_dir.clone().unwrap_or_default()),
        Instruction::User(_) => format!("USER {}", c.user.clone().unwrap_or_default()),
        Instruction::StopSignal(_) => {
            format!("STOPSIGNAL {}", c.stop_signal.clone().unwrap_or_default())
        }
        Instruction::Maintainer(m) => format!("MAINTAINER {m}"),
        Instruction::Expose(_) => {
            // Only this instruction's ports, as Go prints a map: sorted, `map[80/tcp:{}]`.
            let old = before
                .image
                .config
                .exposed_ports
                .clone()
                .unwrap_or_default();
            let new: Vec<String> = c
                .exposed_ports
                .iter()
                .flatten()
                .map(|(p, _)| p.clone())
                .filter(|p| !old.contains_key(p))
                .map(|p| format!("{p}:{{}}"))
                .collect();
            format!("EXPOSE map[{}]", new.join(" "))
        }
        Instruction::Volume(vols) => {
            // The instruction's own words, in order.
            let env = before.expansion_env();
            let words: Vec<String> = vols
                .iter()
                .map(|v| lexer.expand_word(v, &env).unwrap_or_else(|_| v.clone()))
                .collect();
            format!("VOLUME {}", go_list(&words))
        }
        Instruction::Healthcheck(h) => healthcheck(h),
        _ => original.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_runes_and_lists_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_rune(4), r"'\x04'");
        assert_eq!(go_rune(65), "'A'");
        assert_eq!(
            go_quoted_list(&["a b".into(), "c\"d".into()]),
            r#"["a b" "c\"d"]"#
        );
    }
}
