//! `SOURCE_DATE_EPOCH`, from the environment or as a build arg (as BuildKit takes it), and
//! part of each layer step's cache key: a store that built without it does not serve those
//! layers (their mtimes unclamped) to a build with it.

use tests::{TestContext, builds_as_root};

const EPOCH: &str = "1700000000";

/// A store with busybox imported under the epoch (the same base in every such store).
fn store() -> TestContext {
    let ctx = TestContext::new();
    ctx.kiln()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["import", "-c", "CMD [\"sh\"]"])
        .arg(tests::busybox_rootfs_tar())
        .arg("busybox")
        .run()
        .ok();
    ctx
}

#[test]
fn the_epoch_comes_from_a_build_arg_too_and_keys_the_cache() {
    if !builds_as_root() {
        return;
    }
    let dir = TestContext::new().work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "a\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN echo hi > /f\nCOPY a.txt /a.txt\n",
    )
    .unwrap();
    let build = |ctx: &TestContext, env: bool, arg: bool| {
        let mut cmd = ctx.kiln().args(["build", "--progress", "plain", "-t", "t"]);
        cmd = if env {
            cmd.env("SOURCE_DATE_EPOCH", EPOCH)
        } else {
            cmd.env_remove("SOURCE_DATE_EPOCH")
        };
        if arg {
            cmd = cmd
                .arg("--build-arg")
                .arg(format!("SOURCE_DATE_EPOCH={EPOCH}"));
        }
        let iid = ctx.work().join("iid");
        let out = cmd.arg("--iidfile").arg(&iid).arg(&dir).run();
        out.ok();
        (std::fs::read_to_string(&iid).unwrap(), out.stderr)
    };

    // From the environment, in a fresh store.
    let (from_env, _) = build(&store(), true, false);
    // As a build arg, in another fresh store: the same image, dated by it, and no warning
    // that the arg was not consumed.
    let ctx = store();
    let (from_arg, log) = build(&ctx, false, true);
    assert_eq!(from_arg, from_env);
    assert!(!log.contains("were not consumed"), "{log}");
    let inspected: serde_json::Value =
        serde_json::from_str(ctx.run_kiln(&["inspect", "t"]).ok()).unwrap();
    assert_eq!(
        inspected[0]["Created"], "2023-11-14T22:13:20Z",
        "{inspected}"
    );

    // A store that built the same Dockerfile without it: the build with it misses (and says
    // why) and gives the fresh store's image.
    let warm = store();
    let (plain, _) = build(&warm, false, false);
    assert_ne!(plain, from_env);
    let (again, log) = build(&warm, true, false);
    assert!(log.contains("SOURCE_DATE_EPOCH changed"), "{log}");
    assert_eq!(again, from_env);
}
