//! The builtin VMM (`--vmm builtin`, in-process on the rust-vmm crates) boots Linux and runs
//! steps and containers with the same contract as qemu: output, exit codes, standard input,
//! a build whose image equals the container backend's, the timeout.
//!
//! On a host with hardware virtualization the test runs kiln there. These hosts' /dev/kvm is
//! PVM, which cannot boot a stock kernel, so here it runs inside a machine whose emulated
//! CPU has SVM ([`tests::nested`]): kiln's builtin VMM boots its guests on that machine's
//! /dev/kvm. Each guest takes 10-15 s there.

use std::time::Duration;

use tests::TestContext;
use tests::nested::{NestedMachine, NestedOutput};
use tests::vm::{manifest_digest, vm_available};

const EPOCH: &str = "1700000000";

const DOCKERFILE: &str = "FROM busybox:latest
COPY hello.txt /app/hello.txt
RUN mkdir -p /out && echo built > /out/built.txt && chmod 640 /out/built.txt \\
 && ln -s built.txt /out/link && id -u > /out/uid && rm /app/hello.txt
ENV BUILT=yes
";

/// The script each place runs: a container's output and exit code, standard input, a build
/// (its steps' roots on a disk; its manifest digest printed), a hang stopped by the timeout, a kernel panic, running out
/// of memory, a detached container stopped (its trap runs) and one killed, what is left over.
fn script(kiln: &str, context: &str) -> String {
    format!(
        r#"K="{kiln}"
VM="--isolation vm --vmm builtin"
L="--vm-timeout 240s"
set -u
$K run $VM $L --rm busybox:latest sh -c 'echo "hi there"; echo to-stderr >&2; ls /dev; ls /; exit 3' 2>&1
echo "run-exit=$?"
mkdir -p /tmp/vol && echo from-host > /tmp/vol/in
$K run $VM $L --rm -v /tmp/vol:/data busybox:latest sh -c 'cat /data/in; echo from-guest > /data/out'
echo "volume=$(cat /tmp/vol/out)"
echo piped-input | $K run --isolation vm --vm-timeout 240s --rm -i busybox:latest sh -c 'read x; echo "got $x"'
echo "stdin-exit=$?"
SOURCE_DATE_EPOCH={EPOCH} KILN_VM_ROOT_DISK_MIN_MB=0 $K build $VM $L -q --no-cache -t app:vm {context} > /dev/null
echo "build-exit=$?"
$K inspect app:vm | grep -m1 '"digest"' | tr -d ' ,"' | sed 's/^digest:/digest=/'
start=$(date +%s)
$K run $VM --rm --vm-timeout 5s busybox:latest sleep 1000 2>&1
echo "timeout-exit=$? took=$(($(date +%s) - start))"
$K run $VM $L --rm busybox:latest sh -c 'echo c > /proc/sysrq-trigger; sleep 100' 2>&1
echo "panic-exit=$?"
$K run $VM $L --rm --vm-memory 256m busybox:latest sh -c "x=\$(head -c 600000000 /dev/zero | tr '\\0' a); echo \${{#x}}" 2>&1
echo "oom-exit=$?"
started() {{ for i in $(seq 120); do $K logs $1 2>/dev/null | grep -q started && return; sleep 1; done; }}
$K run $VM $L -d --name vmd busybox:latest sh -c "trap 'echo got-term; exit 7' TERM; echo started; while true; do sleep 0.2; done" > /dev/null
started vmd
$K stop vmd > /dev/null
echo "stop-code=$($K wait vmd) logs=$($K logs vmd | tr '\n' ,)"
$K run $VM $L -d --name vmk busybox:latest sh -c "trap '' TERM INT; echo started; while true; do sleep 0.2; done" > /dev/null
started vmk
$K kill vmk > /dev/null
echo "kill-code=$($K wait vmk)"
$K rm vmd vmk > /dev/null
echo "runs-left=$(ls {kiln_root}/vm/runs 2>/dev/null | wc -l)"
"#,
        kiln_root = kiln.split_whitespace().last().unwrap_or_default(),
    )
}

fn value<'a>(out: &'a NestedOutput, key: &str) -> &'a str {
    out.output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {out:#?}"))
}

#[test]
fn builtin_vmm_boots_linux_and_runs_steps() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let app = ctx.work().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(app.join("hello.txt"), "hello\n").unwrap();
    let store_before_build = ctx.work().join("store");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(ctx.root())
        .arg(&store_before_build)
        .status()
        .unwrap();
    assert!(copied.success());

    // The reference: the container backend's image.
    ctx.kiln()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args([
            "build",
            "-q",
            "--no-cache",
            "--isolation",
            "container",
            "-t",
            "app:ct",
        ])
        .arg(&app)
        .run()
        .ok();
    let container_digest = manifest_digest(&ctx, "app:ct");

    let out = if vm_sandbox::vm::hardware_kvm() {
        let kiln = format!(
            "{} --root {}",
            tests::kiln_bin().display(),
            ctx.root().display()
        );
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{{\n{}\n}} 2>&1",
                script(&kiln, &app.display().to_string())
            ))
            .output()
            .unwrap();
        NestedOutput {
            output: String::from_utf8_lossy(&o.stdout).to_string(),
            code: o.status.code(),
            console: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    } else {
        let Some(machine) = NestedMachine::new(&store_before_build) else {
            return;
        };
        machine.add(&app, "/app");
        machine.run(
            &script("kiln --root /tmp/store", "/app"),
            Duration::from_secs(600),
        )
    };

    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.output.contains("hi there\n"), "{out:#?}");
    assert!(out.output.contains("to-stderr\n"), "{out:#?}");
    assert_eq!(value(&out, "run-exit"), "3", "{out:#?}");
    // The guest sees no /dev/kvm, no host devices, not the host's (or machine's) files: the
    // host has /kiln and /tmp/store (nested) or the test's directories.
    assert!(!out.output.contains("kvm"), "{out:#?}");
    for host_only in ["kiln\n", "store\n", "mod\n", "script.sh\n"] {
        assert!(!out.output.contains(host_only), "{host_only}: {out:#?}");
    }
    // `--vmm auto` (the default) takes the builtin VMM where there is hardware virtualization
    // (the nested machine has no qemu: this run would fail with it).
    assert!(out.output.contains("got piped-input\n"), "{out:#?}");
    assert_eq!(value(&out, "stdin-exit"), "0", "{out:#?}");
    // A read-write volume (the mounts disk, beside the output disk) comes back.
    assert!(out.output.contains("from-host\n"), "{out:#?}");
    assert_eq!(value(&out, "volume"), "from-guest", "{out:#?}");
    assert_eq!(value(&out, "build-exit"), "0", "{out:#?}");
    assert_eq!(value(&out, "digest"), container_digest, "{out:#?}");
    let timeout = value(&out, "timeout-exit");
    assert!(timeout.starts_with("125 "), "{out:#?}");
    let took: u64 = timeout.rsplit('=').next().unwrap().parse().unwrap();
    assert!(took < 60, "the timeout took {took} s: {out:#?}");
    assert!(out.output.contains("did not finish within 5s"), "{out:#?}");
    assert_eq!(value(&out, "panic-exit"), "125", "{out:#?}");
    assert!(out.output.contains("kernel panicked"), "{out:#?}");
    assert_eq!(value(&out, "oom-exit"), "125", "{out:#?}");
    assert!(out.output.contains("ran out of memory"), "{out:#?}");
    assert_eq!(
        value(&out, "stop-code"),
        "7 logs=started,got-term,",
        "{out:#?}"
    );
    assert_eq!(value(&out, "kill-code"), "137", "{out:#?}");
    assert_eq!(value(&out, "runs-left"), "0", "{out:#?}");
}
