//! What the config-only instructions do to an image config, as Docker defines it.

use parser::{Command, Instruction, Lexer};
use snapshotter::ImageConfig;
use snapshotter::config::Empty;

/// The default `SHELL` on Linux.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The config being built, plus what Docker remembers between instructions.
#[derive(Clone, Debug, Default)]
pub struct ConfigState {
    /// The image config so far.
    pub image: ImageConfig,
    /// Whether this stage (or import) set `CMD`, so a later `ENTRYPOINT` keeps it.
    pub cmd_set: bool,
    /// Build arguments in scope, consulted after ENV during expansion.
    pub args: Vec<(String, String)>,
    /// Global ARG values (before the first FROM), for redeclarations without a value.
    pub globals: Vec<(String, String)>,
}

impl ConfigState {
    /// The variables visible to expansion: build args, overridden by the environment.
    pub fn expansion_env(&self) -> Vec<(String, String)> {
        let mut env = self.args.clone();
        env.extend(self.image.config.env_pairs());
        env
    }

    /// The shell for shell-form commands.
    pub fn shell(&self) -> Vec<String> {
        match &self.image.config.shell {
            Some(s) => s.clone(),
            None => DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The argv a command runs as: shell form goes through the stage's SHELL.
    pub fn argv(&self, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }
}

fn expand(lexer: &Lexer, word: &str, env: &dyn parser::Env) -> Result<String, String> {
    lexer.expand_word(word, env).map_err(|e| e.to_string())
}

/// Expands `KEY=value` pairs; every pair on one line sees the variables from before the line.
pub(crate) fn expand_pairs(
    state: &ConfigState,
    pairs: &[parser::KeyValue],
    lexer: &Lexer,
) -> Result<Vec<(String, String)>, String> {
    let env = state.expansion_env();
    pairs
        .iter()
        .map(|kv| {
            Ok((
                expand(lexer, &kv.key, &env)?,
                expand(lexer, &kv.value, &env)?,
            ))
        })
        .collect()
}

/// Applies a config-only instruction. Returns `Ok(false)` if the instruction is not one.
pub fn apply_config(
    state: &mut ConfigState,
    ins: &Instruction,
    lexer: &Lexer,
) -> Result<bool, String> {
    match ins {
        Instruction::Env(pairs) => {
            // Every pair on one line sees the environment from before the line.
            let expanded = expand_pairs(state, pairs, lexer)?;
            for (k, v) in expanded {
                state.image.config.env_set(&k, &v);
            }
        }
        Instruction::Label(pairs) => {
            let expanded = expand_pairs(state, pairs, lexer)?;
            let labels = state
                .image
                .config
                .labels
                .get_or_insert_with(Default::default);
            labels.extend(expanded);
        }
        Instruction::Cmd(c) => {
            let argv = state.argv(c);
            state.image.config.cmd = Some(argv);
            state.cmd_set = true;
        }
        Instruction::Entrypoint(c) => {
            let argv = state.argv(c);
            state.image.config.entrypoint = Some(argv);
            if !state.cmd_set {
                state.image.config.cmd = None;
            }
        }
        Instruction::Shell(v) => state.image.config.shell = Some(v.clone()),
        Instruction::Workdir(w) => {
            let env = state.expansion_env();
            let w = expand(lexer, w, &env)?;
            let cfg = &mut state.image.config;
            let base = cfg.working_dir.clone().unwrap_or_else(|| "/".into());
            cfg.working_dir = Some(clean_path(&if w.starts_with('/') {
                w
            } else {
                format!("{base}/{w}")
            }));
        }
        Instruction::User(u) => {
            let env = state.expansion_env();
            state.image.config.user = Some(expand(lexer, u, &env)?);
        }
        Instruction::StopSignal(s) => {
            let env = state.expansion_env();
            let sig = expand(lexer, s, &env)?;
            if !is_signal(&sig) {
                return Err(format!("Invalid signal: {sig}"));
            }
            state.image.config.stop_signal = Some(sig);
        }
        Instruction::Maintainer(m) => state.image.author = Some(m.clone()),
        Instruction::Expose(ports) => {
            let env = state.expansion_env();
            let mut all = Vec::new();
            for p in ports {
                all.extend(parse_port_spec(&expand(lexer, p, &env)?)?);
            }
            let set = state
                .image
                .config
                .exposed_ports
                .get_or_insert_with(Default::default);
            set.extend(all.into_iter().map(|p| (p, Empty {})));
        }
        Instruction::Volume(vols) => {
            let env = state.expansion_env();
            let mut all = Vec::new();
            for v in vols {
                let v = expand(lexer, v, &env)?;
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                all.push(v);
            }
            let set = state
                .image
                .config
                .volumes
                .get_or_insert_with(Default::default);
            set.extend(all.into_iter().map(|v| (v, Empty {})));
        }
        Instruction::Healthcheck(h) => {
            state.image.config.healthcheck = Some(healthcheck_json(h));
        }
        Instruction::Onbuild(trigger) => {
            state
                .image
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.original.clone());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Whether `s` names a Linux signal as Docker accepts them: a number, or a name with or
/// without `SIG` (`SIGTERM`, `term`, `RTMIN+3`).
fn is_signal(s: &str) -> bool {
    const NAMES: [&str; 33] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if name == "XFSZ" || NAMES.contains(&name) {
        return true;
    }
    let rt = |prefix: &str, max: u32| {
        name.strip_prefix(prefix)
            .is_some_and(|n| n.is_empty() || n.parse::<u32>().is_ok_and(|v| v <= max))
    };
    rt("RTMIN+", 15) || rt("RTMAX-", 14) || name == "RTMIN" || name == "RTMAX"
}

/// Docker's `Healthcheck` config object (durations in nanoseconds).
fn healthcheck_json(h: &parser::Healthcheck) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    match h {
        parser::Healthcheck::None => json!({ "Test": ["NONE"] }),
        parser::Healthcheck::Cmd {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let mut m = Map::new();
            m.insert("Test".into(), json!(test));
            for (k, d) in [
                ("Interval", interval),
                ("Timeout", timeout),
                ("StartPeriod", start_period),
                ("StartInterval", start_interval),
            ] {
                if let Some(d) = d {
                    m.insert(k.into(), json!(d.as_nanos() as u64));
                }
            }
            if let Some(r) = retries {
                m.insert("Retries".into(), json!(r));
            }
            Value::Object(m)
        }
    }
}

/// `80`, `80/udp`, `8000-8002/tcp` -> `["80/tcp"]`, ... as Docker normalizes them.
pub fn parse_port_spec(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let port = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {spec}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if hi < lo {
        return Err(format!(
            "invalid range specified for container port: {spec}"
        ));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Lexically cleans an absolute path (`/a/./b/../c/` -> `/a/c`), as Go's `path.Clean`.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_checked_like_docker() {
        for ok in ["SIGTERM", "term", "9", "SIGRTMIN+3", "USR1", "sigkill"] {
            assert!(is_signal(ok), "{ok}");
        }
        for bad in ["SIGNOPE", "0", "65", "", "RTMIN+99"] {
            assert!(!is_signal(bad), "{bad}");
        }
    }

    fn run(lines: &[&str]) -> ConfigState {
        let mut st = ConfigState::default();
        for l in lines {
            let ins = parser::instruction(&parser::parse_line(l).unwrap()).unwrap();
            assert!(
                apply_config(&mut st, &ins, &Lexer::default()).unwrap(),
                "{l}"
            );
        }
        st
    }

    #[test]
    fn env_on_one_line_sees_the_values_from_before_it() {
        let st = run(&["ENV A=1", "ENV A=2 B=$A", "ENV C=${A}x"]);
        assert_eq!(st.image.config.env.unwrap(), ["A=2", "B=1", "C=2x"]);
    }

    #[test]
    fn entrypoint_resets_cmd_unless_cmd_was_set_here() {
        let mut st = ConfigState::default();
        st.image.config.cmd = Some(vec!["inherited".into()]);
        let ep =
            parser::instruction(&parser::parse_line("ENTRYPOINT [\"/app\"]").unwrap()).unwrap();
        apply_config(&mut st, &ep, &Lexer::default()).unwrap();
        assert_eq!(st.image.config.cmd, None);
        let st = run(&["CMD [\"x\"]", "ENTRYPOINT top -b"]);
        assert_eq!(st.image.config.cmd.unwrap(), ["x"]);
        assert_eq!(
            st.image.config.entrypoint.unwrap(),
            ["/bin/sh", "-c", "top -b"]
        );
    }

    #[test]
    fn workdir_expose_volume_label_user() {
        let st = run(&[
            "ENV D=/srv",
            "WORKDIR $D",
            "WORKDIR app/../web/",
            "EXPOSE 80 53/UDP 7000-7001",
            "VOLUME [\"/data\"]",
            "LABEL a=b \"c d\"=\"e f\"",
            "USER nobody:nogroup",
            "HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/",
            "ONBUILD RUN make",
        ]);
        assert_eq!(
            st.image.config.healthcheck,
            Some(
                serde_json::json!({"Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 5_000_000_000u64, "Retries": 3})
            )
        );
        assert_eq!(
            st.image.config.on_build.as_deref(),
            Some(&["RUN make".to_string()][..])
        );
        let c = st.image.config;
        assert_eq!(c.working_dir.unwrap(), "/srv/web");
        let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, ["53/udp", "7000/tcp", "7001/tcp", "80/tcp"]);
        assert_eq!(
            c.volumes.unwrap().into_keys().collect::<Vec<_>>(),
            ["/data"]
        );
        assert_eq!(c.labels.unwrap()["c d"], "e f");
        assert_eq!(c.user.unwrap(), "nobody:nogroup");
        assert!(parse_port_spec("80/icmp").is_err());
        assert!(parse_port_spec("x").is_err());
    }
}
