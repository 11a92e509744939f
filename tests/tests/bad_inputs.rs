//! A catalog of bad inputs across the CLI: each is one line on stderr (`kiln: error: ...`)
//! naming what is wrong, a non-zero exit, no panic and nothing on stdout.

use tests::TestContext;

struct Case {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    want: &'static str,
}

fn case(args: &[&str], want: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        want,
    }
}

#[test]
fn bad_inputs_are_one_clear_line() {
    let ctx = TestContext::new();
    let base = ctx.base_image();
    let w = ctx.work();
    let p = |name: &str| w.join(name).display().to_string();
    // Contexts and files the cases use.
    let mk = |name: &str, dockerfile: &[u8]| {
        let d = w.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Dockerfile"), dockerfile).unwrap();
        d.display().to_string()
    };
    let good = mk("good", b"FROM busybox\nRUN true\n");
    let garbage = mk(
        "garbage",
        &(0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let mut long = b"FROM busybox\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 100 << 20));
    let long = mk("long", &long);
    let dir_df = mk("dirdf", b"");
    std::fs::remove_file(w.join("dirdf/Dockerfile")).unwrap();
    std::fs::create_dir(w.join("dirdf/Dockerfile")).unwrap();
    let no_from = mk("nofrom", b"FROM\n");
    let bad_chmod = mk("badchmod", b"FROM busybox\nCOPY --chmod=abc Dockerfile /\n");
    let missing = mk("missing", b"FROM busybox\nCOPY nope /\n");
    let bad_arg = mk("badarg", b"ARG\nFROM busybox\n");
    let unknown_stage = mk("stage", b"FROM busybox\nCOPY --from=5 /x /y\n");
    let bad_expose = mk("expose", b"FROM busybox\nEXPOSE notaport\n");
    let bad_signal = mk("signal", b"FROM busybox\nSTOPSIGNAL SIGNOPE\n");
    std::fs::write(w.join("text.txt"), "just text\n").unwrap();
    std::fs::write(w.join("garbage.tar"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
    let cases = vec![
        case(&["frobnicate"], "unrecognized subcommand"),
        case(&["build", "--nope", &good], "unexpected argument"),
        case(&["build"], "required"),
        case(&["images", "--format", "xml"], "invalid value"),
        case(&["pull", "UPPER/Case"], "invalid reference"),
        case(&["pull", "--platform", "linux", "x"], "--platform"),
        case(
            &["pull", "no-such-registry.invalid/x:1"],
            "unknown registry host",
        ),
        case(&["pull", "a:b:c:d"], "invalid reference"),
        case(&["tag", "nosuch", "x"], "no such image"),
        case(&["tag", base, "UPPER"], "invalid reference"),
        case(&["rmi", "nosuch"], "no such image"),
        case(&["inspect", "nosuch"], "no such image"),
        case(&["history", "nosuch"], "no such image"),
        case(&["save", "-o", &p("out.tar"), "nosuch"], "no such image"),
        case(
            &["load", "-i", "/nonexistent/archive.tar"],
            "/nonexistent/archive.tar",
        ),
        case(&["load", "-i", &p("text.txt")], "archive"),
        case(&["load", "-i", &p("garbage.tar")], "not a valid archive"),
        case(&["import", "/nonexistent.tar", "x"], "/nonexistent.tar"),
        case(&["import", &p("text.txt"), "x"], "tar"),
        case(
            &["import", "--change", "BOGUS x", &p("text.txt"), "x"],
            "BOGUS",
        ),
        case(
            &["build", "-f", "/nonexistent/Dockerfile", &good],
            "/nonexistent/Dockerfile",
        ),
        case(&["build", &p("no-such-context")], "not a directory"),
        case(&["build", &dir_df], "Dockerfile"),
        case(&["build", &garbage], "Dockerfile:"),
        case(&["build", &long], "line greater than max allowed size"),
        case(&["build", &no_from], "Dockerfile:1"),
        case(&["build", &bad_chmod], "chmod"),
        case(
            &["build", &missing],
            "\"nope\" not found in the build context",
        ),
        case(&["build", &bad_arg], "ARG"),
        case(&["build", &unknown_stage], "COPY --from=5"),
        case(&["build", &bad_expose], "notaport"),
        case(&["build", &bad_signal], "Invalid signal: SIGNOPE"),
        case(&["build", "--platform", "bogus", &good], "platform"),
        case(&["build", "--target", "nosuch", &good], "target stage"),
        case(
            &["build", "--output", "type=weird,dest=x", &good],
            "unknown output type",
        ),
        case(&["build", "--secret", "bogus", &good], "--secret"),
        case(&["build", "--cache-to", "type=bogus", &good], "cache spec"),
        case(&["build", "--format", "xml", &good], "invalid value"),
        case(&["build", "--progress", "fancy", &good], "--progress"),
        case(&["build", "--compression", "lz4", &good], "lz4"),
        case(
            &["build", "--build-arg-file", "/nonexistent.env", &good],
            "/nonexistent.env",
        ),
        case(&["push", "nosuch:1"], "no such image"),
        case(&["run", "--network", "weird", base, "true"], "network"),
        case(&["layer", "create", "/nonexistent/dir"], "/nonexistent/dir"),
        case(
            &["parse", "-f", "/nonexistent/Dockerfile"],
            "/nonexistent/Dockerfile",
        ),
        case(&["search", "127.0.0.1:1/x"], "127.0.0.1:1"),
        Case {
            args: ["login", "-u", "me", "--password-stdin", "127.0.0.1:1"]
                .map(String::from)
                .to_vec(),
            stdin: Some(b"pw\n".to_vec()),
            want: "cannot reach registry 127.0.0.1:1",
        },
        Case {
            args: ["login", "-u", "me", "--password-stdin", "127.0.0.1:1"]
                .map(String::from)
                .to_vec(),
            stdin: Some(b"\n".to_vec()),
            want: "password is empty",
        },
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let before = ctx.store_listing();
    let mut failures = Vec::new();
    for c in &cases {
        let mut cmd = ctx.kiln().args(&c.args);
        if let Some(input) = &c.stdin {
            cmd = cmd.stdin(input.clone());
        }
        let out = cmd.run();
        // One error line (progress lines may come before it, and a Dockerfile error shows the
        // source line and a caret under it), short, and nothing on stdout.
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("kiln: error: "))
            .collect();
        let ok = out.code.is_some_and(|c| c != 0)
            && errors.len() == 1
            && errors[0].to_lowercase().contains(&c.want.to_lowercase())
            && out.stderr.len() < 4000
            && !out.stderr.contains("panicked")
            && out.stdout.is_empty();
        if !ok {
            let shown: String = out.stderr.chars().take(400).collect();
            failures.push(format!(
                "{:?}: exit {:?}, stdout {:?}, stderr {shown:?}",
                c.args
                    .iter()
                    .map(|a| a.chars().take(60).collect::<String>())
                    .collect::<Vec<_>>(),
                out.code,
                out.stdout.chars().take(80).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // None of them changed the store (the failed build's scratch leaves nothing either).
    let after: Vec<(String, u64)> = ctx
        .store_listing()
        .into_iter()
        .filter(|(p, _)| p != "gc.lock" && !p.starts_with("cache/"))
        .collect();
    let before: Vec<(String, u64)> = before
        .into_iter()
        .filter(|(p, _)| p != "gc.lock" && !p.starts_with("cache/"))
        .collect();
    assert_eq!(after.iter().filter(|e| e.0 == "index.json").count(), 1);
    assert_eq!(
        after.iter().find(|e| e.0 == "index.json"),
        before.iter().find(|e| e.0 == "index.json")
    );
}
