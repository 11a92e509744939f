//! `kiln parse` and `kiln lint` from the command line.

use tests::TestContext;

#[test]
fn parse_prints_stages_and_json() {
    let ctx = TestContext::new();
    let df = "ARG BASE=busybox\nFROM $BASE AS build\nRUN --network=none make \\\n  all\nFROM scratch\nCOPY --from=build /out /\n";
    let out = ctx.kiln().args(["parse", "-f", "-"]).stdin(df).run();
    assert_eq!(
        out.ok(),
        "global ARG BASE=busybox\nstage 0 (build): FROM $BASE\n     3: (run [\"--network=none\"] \"make   all\")\nstage 1: FROM scratch\n     6: (copy [\"--from=build\"] \"/out\" \"/\")\n"
    );
    let out = ctx
        .kiln()
        .args(["parse", "--json", "-f", "-"])
        .stdin(df)
        .run();
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(
        v["stages"][1]["instructions"][0]["instruction"]["value"]["from"],
        "build"
    );
    assert_eq!(v["stages"][0]["instructions"][0]["end_line"], 4);
    // A broken file: message with position, the line and a caret, exit 1.
    let out = ctx
        .kiln()
        .args(["parse", "-f", "-"])
        .stdin("FROM x\nCOPY --chmod=9 a b\n")
        .run();
    assert_eq!(
        out.fails(),
        "kiln: error: -:2:1: invalid chmod parameter 9\n 2 | COPY --chmod=9 a b\n   | ^\n"
    );
}

#[test]
fn lint_reports_rules_honours_check_directive_and_dockerignore() {
    let ctx = TestContext::new();
    let dir = ctx.work();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS Build\nMAINTAINER me\nCOPY secret.key /\nCMD run\n",
    )
    .unwrap();
    std::fs::write(dir.join(".dockerignore"), "*.key\n").unwrap();
    let df = dir.join("Dockerfile");
    let out = ctx.kiln().args(["lint", "-f"]).arg(&df).arg(&dir).run();
    let path = df.display().to_string();
    assert_eq!(
        out.ok(),
        format!(
            "{path}:1: StageNameCasing: Stage name 'Build' should be lowercase\n\
             {path}:2: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label\n\
             {path}:3: CopyIgnoredFile: Attempting to Copy file \"secret.key\" that is excluded by .dockerignore\n\
             {path}:4: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n"
        )
    );
    // error=true turns findings into a failure; skip= drops rules.
    let strict =
        "# check=skip=JSONArgsRecommended;error=true\nFROM busybox\nCMD run\nWORKDIR app\n";
    let out = ctx
        .kiln()
        .args(["lint", "--format", "json", "-f", "-"])
        .stdin(strict)
        .run();
    assert_eq!(out.code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["rule"], "WorkdirRelativePath");
    assert_eq!(v[0]["level"], "error");
    // UndefinedVar uses the base image's environment from the local store.
    ctx.base_image();
    let out = ctx
        .kiln()
        .args(["lint", "-f", "-"])
        .stdin("FROM busybox\nWORKDIR $PATH/$NOPE\n")
        .run();
    assert_eq!(
        out.ok(),
        "-:2: UndefinedVar: Usage of undefined variable '$NOPE'\n"
    );
}
