//! Malformed Dockerfiles and the exact `file:line:col: message` each one gets.

fn error_of(src: &str) -> String {
    let e = parser::parse(src)
        .and_then(|doc| parser::stages(&doc).map(|_| ()))
        .expect_err(src);
    format!("Dockerfile:{e}")
}

#[test]
fn every_malformed_file_gets_its_message() {
    let cases: &[(&str, &str)] = &[
        ("", "1:1: file with no instructions"),
        ("# only a comment\n\n", "1:1: file with no instructions"),
        ("FROM x\nENV PATH\n", "2:1: ENV must have two arguments"),
        (
            "FROM x\nCMD [ \"echo\", [ \"nested\" ] ]\n",
            "2:1: when using JSON array syntax, arrays must be comprised of strings only",
        ),
        (
            "FROM x\nRUNN make\n",
            "2:1: unknown instruction \"RUNN\" (did you mean \"RUN\"?)",
        ),
        (
            "FROM x\n    COPPY a b\n",
            "2:5: unknown instruction \"COPPY\" (did you mean \"COPY\"?)",
        ),
        (
            "FROM x\nFOOBARBAZ\n",
            "2:1: unknown instruction \"FOOBARBAZ\"",
        ),
        (
            "RUN x\n",
            "1:1: RUN before the first FROM (only ARG may come first)",
        ),
        (
            "FROM a b\n",
            "1:1: FROM requires either one or three arguments",
        ),
        (
            "FROM a AS 1bad\n",
            "1:1: invalid name for build stage: \"1bad\", name can't start with a number or contain symbols",
        ),
        (
            "FROM a AS x\nFROM b AS X\n",
            "2:1: duplicate stage name \"x\"",
        ),
        ("FROM x\nRUN --bogus true\n", "2:1: unknown flag: bogus"),
        (
            "FROM x\nRUN --mount=type=nfs,target=/x true\n",
            "2:1: unsupported mount type \"nfs\"",
        ),
        (
            "FROM x\nRUN --mount=type=bind true\n",
            "2:1: mount destination not specified",
        ),
        (
            "FROM x\nRUN --mount=type=cache,target=/c,sharing=all true\n",
            "2:1: unsupported sharing value \"all\"",
        ),
        (
            "FROM x\nRUN --network=bridge true\n",
            "2:1: unsupported network mode \"bridge\"",
        ),
        (
            "FROM x\nRUN --security=weird true\n",
            "2:1: unsupported security mode \"weird\"",
        ),
        ("FROM x\nRUN\n", "2:1: RUN requires at least one argument"),
        (
            "FROM x\nCOPY onlyone\n",
            "2:1: COPY requires at least two arguments, but only 1 provided",
        ),
        (
            "FROM x\nCOPY --chmod=999 a b\n",
            "2:1: invalid chmod parameter 999",
        ),
        (
            "FROM x\nCOPY --from a b\n",
            "2:1: missing a value on flag: from",
        ),
        (
            "FROM x\nCOPY --link=maybe a b\n",
            "2:1: expecting boolean value for flag link, not: maybe",
        ),
        (
            "FROM x\nCOPY --from=a --from=b c d\n",
            "2:1: duplicate flag specified: from",
        ),
        ("FROM x\nADD --from=x a b\n", "2:1: unknown flag: from"),
        (
            "FROM x\nSHELL /bin/sh -c\n",
            "2:1: SHELL requires the arguments to be in JSON form",
        ),
        (
            "FROM x\nHEALTHCHECK CONNECT TCP 7000\n",
            "2:1: Unknown type \"CONNECT\" in HEALTHCHECK (try CMD)",
        ),
        (
            "FROM x\nHEALTHCHECK NONE extra\n",
            "2:1: HEALTHCHECK NONE takes no arguments",
        ),
        (
            "FROM x\nHEALTHCHECK CMD\n",
            "2:1: Missing command after HEALTHCHECK CMD",
        ),
        (
            "FROM x\nHEALTHCHECK --interval=5 CMD true\n",
            "2:1: time: invalid duration \"5\"",
        ),
        (
            "FROM x\nHEALTHCHECK --retries=-1 CMD true\n",
            "2:1: invalid retries value \"-1\": must be a non-negative integer",
        ),
        (
            "FROM x\nONBUILD FROM y\n",
            "2:1: FROM isn't allowed as an ONBUILD trigger",
        ),
        (
            "FROM x\nONBUILD\n",
            "2:1: ONBUILD requires at least one argument",
        ),
        (
            "FROM x\nONBUILD RUN --bogus x\n",
            "2:1: unknown flag: bogus",
        ),
        (
            "FROM x\nWORKDIR\n",
            "2:1: WORKDIR requires exactly one argument",
        ),
        (
            "FROM x\nLABEL a=b c\n",
            "2:1: Syntax error - can't find = in \"c\". Must be of the form: name=value",
        ),
        ("FROM x\nENV =x\n", "2:1: ENV names can not be blank"),
        (
            "FROM x\nEXPOSE\n",
            "2:1: EXPOSE requires at least one argument",
        ),
        ("FROM x\nARG\n", "2:1: ARG requires at least one argument"),
        (
            "# escape=x\nFROM y\n",
            "1:1: invalid escape token 'x' does not match ` or \\",
        ),
        (
            "# escape=`\n# escape=\\\nFROM y\n",
            "2:1: only one escape parser directive can be used",
        ),
        (
            "FROM x\nRUN <<EOF\nno end\n",
            "2:1: unterminated heredoc EOF: no line with just \"EOF\" below",
        ),
        (
            "FROM x\n\nRUN a \\\n  && b\nCMD [\"x\"\nMAINTAINER\n",
            "6:1: MAINTAINER requires exactly one argument",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut wrong = Vec::new();
    for (src, want) in cases {
        let got = error_of(src);
        let want = format!("Dockerfile:{want}");
        if got != want {
            wrong.push(format!("{src:?}\n  want {want}\n  got  {got}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn errors_render_the_line_with_a_caret() {
    let src = "FROM x\n\tRUNN make\n";
    let e = parser::parse(src)
        .and_then(|d| parser::stages(&d).map(|_| ()))
        .unwrap_err();
    let d = parser::dockerfile_error("Dockerfile", src, &e);
    assert_eq!(
        d.to_string(),
        "Dockerfile:2:2: unknown instruction \"RUNN\" (did you mean \"RUN\"?)\n 2 | \tRUNN make\n   | \t^"
    );
}
