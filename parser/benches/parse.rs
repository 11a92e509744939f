//! Parsing speed: a generated 10,000-instruction Dockerfile through `parse` and `stages`
//! (typing every instruction), and word expansion. Target: under 20 ms for the file.
//!
//! `cargo bench -p parser --bench parse` prints criterion's figures and the time per
//! instruction.

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;

/// A realistic mix: multi-stage, continuation lines, JSON and shell forms, flags, heredocs.
pub fn generate(instructions: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\n");
    let mut n = 1;
    let mut stage = 0;
    while n < instructions {
        let i = n;
        let line = match (i - 1) % 12 {
            0 => {
                stage += 1;
                format!("FROM ${{BASE}} AS stage{stage}")
            }
            1 => format!("ARG VERSION_{i}=1.{i}.0"),
            2 => format!("ENV PATH=/opt/tool{i}/bin:$PATH HOME=/root LANG=C.UTF-8"),
            3 => format!(
                "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    apt-get update && \\\n    apt-get install -y pkg{i} && \\\n    rm -rf /var/lib/apt/lists/*"
            ),
            4 => format!("COPY --chown=app:app --chmod=0644 src/{i}/ /app/src/{i}/"),
            5 => format!("LABEL org.example.step{i}=\"value {i}\" org.example.other=x"),
            6 => format!("WORKDIR /app/{i}"),
            7 => format!("RUN [\"/bin/sh\", \"-c\", \"echo {i} > /tmp/{i}\"]"),
            8 => format!("EXPOSE {}/tcp", 1000 + i % 60000),
            9 => format!("RUN <<EOF\nset -e\necho step {i}\nEOF"),
            10 => format!("USER {i}:{i}"),
            _ => format!(
                "HEALTHCHECK --interval=30s --timeout=3s CMD curl -f http://localhost:{i}/ || exit 1"
            ),
        };
        s.push_str(&line);
        s.push('\n');
        n += 1;
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = generate(10_000);
    let doc = parser::parse(&text).unwrap();
    assert_eq!(doc.nodes.len(), 10_000);
    c.bench_function("parse 10k instructions", |b| {
        b.iter(|| parser::parse(black_box(&text)).unwrap())
    });
    c.bench_function("parse + type 10k instructions", |b| {
        b.iter(|| {
            let doc = parser::parse(black_box(&text)).unwrap();
            black_box(parser::stages(&doc).unwrap().1.len())
        })
    });
    let env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("F".into(), "a.tar.gz".into()),
    ];
    let lexer = parser::Lexer::default();
    c.bench_function("expand word", |b| {
        b.iter(|| {
            lexer
                .expand_word(black_box("/opt/${F%%.*}/bin:$PATH:\"q $F\""), &env)
                .unwrap()
        })
    });
}

// The macro generates an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;

fn main() {
    benches();
    // A plain summary line with the figure the issue asks for.
    let text = generate(10_000);
    let runs = 20;
    let start = Instant::now();
    for _ in 0..runs {
        let doc = parser::parse(black_box(&text)).unwrap();
        black_box(parser::stages(&doc).unwrap().1.len());
    }
    let per_file = start.elapsed() / runs;
    println!(
        "parse + type, 10,000 instructions: {:.2} ms per file, {} ns per instruction (target: under 20 ms)",
        per_file.as_secs_f64() * 1e3,
        per_file.as_nanos() / 10_000
    );
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
