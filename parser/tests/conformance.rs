//! BuildKit's own parser and lexer test data, run case by case (one named test each).
//!
//! The corpus lives outside the repository, in `../shared/conformance` beside the checkout
//! (or `KILN_CONFORMANCE_DIR`); its README describes the formats. A missing corpus is a
//! failure, not a skip.

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Failed, Trial};
use parser::{Lexer, parse};

fn corpus() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CONFORMANCE_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
}

fn dockerfile_dir() -> PathBuf {
    corpus().join("buildkit/frontend/dockerfile")
}

fn read(p: &Path) -> Result<String, Failed> {
    std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()).into())
}

fn case_dirs(sub: &str) -> Vec<PathBuf> {
    let dir = dockerfile_dir().join("parser").join(sub);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance corpus missing at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn positive(dir: PathBuf) -> Result<(), Failed> {
    let src = read(&dir.join("Dockerfile"))?;
    let expected = read(&dir.join("result"))?;
    let doc = parse(&src).map_err(|e| format!("parse failed: {e}"))?;
    let got: String = doc.nodes.iter().map(|n| n.dump() + "\n").collect();
    if got != expected {
        return Err(format!("dump differs\n--- expected\n{expected}--- got\n{got}").into());
    }
    Ok(())
}

fn negative(dir: PathBuf) -> Result<(), Failed> {
    let src = read(&dir.join("Dockerfile"))?;
    match parse(&src) {
        Ok(doc) => Err(format!(
            "parsed, but must fail: {:?}",
            doc.nodes.iter().map(|n| n.dump()).collect::<Vec<_>>()
        )
        .into()),
        Err(_) => Ok(()),
    }
}

fn line_ranges() -> Result<(), Failed> {
    let src = read(&dockerfile_dir().join("parser/testfile-line/Dockerfile"))?;
    let doc = parse(&src).map_err(|e| e.to_string())?;
    let got: Vec<(usize, usize)> = doc
        .nodes
        .iter()
        .map(|n| (n.start.line, n.end_line))
        .collect();
    if doc.range() != Some((5, 31)) || got != [(5, 5), (11, 12), (17, 31)] {
        return Err(format!("ranges: root {:?}, instructions {got:?}", doc.range()).into());
    }
    Ok(())
}

fn env_var_rows() -> Vec<Trial> {
    let path = dockerfile_dir().join("shell/envVarTest");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let env: Vec<(String, String)> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut trials = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(fields.len(), 3, "envVarTest:{}: malformed row", n + 1);
        let (platform, input, expected) = (
            fields[0].to_string(),
            fields[1].to_string(),
            fields[2].to_string(),
        );
        assert!(
            matches!(platform.as_str(), "A" | "U" | "W"),
            "envVarTest:{}: platform {platform}",
            n + 1
        );
        if platform == "W" {
            continue;
        }
        let env = env.clone();
        trials.push(Trial::test(
            format!("envVarTest::line_{:03}", n + 1),
            move || {
                let got = Lexer::new('\\').expand_word(&input, &env);
                match (expected.as_str(), got) {
                    ("error", Err(_)) => Ok(()),
                    ("error", Ok(v)) => {
                        Err(format!("{input:?}: expected an error, got {v:?}").into())
                    }
                    (want, Ok(v)) if v == want => Ok(()),
                    (want, got) => Err(format!("{input:?}: expected {want:?}, got {got:?}").into()),
                }
            },
        ));
    }
    trials
}

fn words_rows() -> Vec<Trial> {
    let path = dockerfile_dir().join("shell/wordsTest");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut env: Vec<(String, String)> = Vec::new();
    let mut trials = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let (k, v) = rest.trim_start().split_once('=').expect("ENV row has =");
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let (input, expected) = line
            .split_once('|')
            .unwrap_or_else(|| panic!("wordsTest:{}: no |", n + 1));
        let input = input.trim().to_string();
        let expected: Vec<String> = expected.trim_start().split(',').map(String::from).collect();
        let env = env.clone();
        trials.push(Trial::test(
            format!("wordsTest::line_{:03}", n + 1),
            move || {
                let got = Lexer::new('\\').expand_words(&input, &env);
                match got {
                    Err(_) if expected == ["error"] => Ok(()),
                    Ok(w) if w == expected => Ok(()),
                    other => Err(format!("{input:?}: expected {expected:?}, got {other:?}").into()),
                }
            },
        ));
    }
    trials
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    let positives = case_dirs("testfiles");
    let negatives = case_dirs("testfiles-negative");
    assert_eq!(
        (positives.len(), negatives.len()),
        (33, 4),
        "the corpus is incomplete"
    );
    for dir in positives {
        let name = format!("testfiles::{}", dir.file_name().unwrap().to_string_lossy());
        trials.push(Trial::test(name, move || positive(dir)));
    }
    for dir in negatives {
        let name = format!(
            "testfiles_negative::{}",
            dir.file_name().unwrap().to_string_lossy()
        );
        trials.push(Trial::test(name, move || negative(dir)));
    }
    trials.push(Trial::test("testfile_line::ranges", line_ranges));
    let env_rows = env_var_rows();
    assert_eq!(
        env_rows.len(),
        228,
        "envVarTest should have 228 rows for Unix"
    );
    trials.extend(env_rows);
    let words = words_rows();
    assert_eq!(words.len(), 24, "wordsTest should have 24 rows");
    trials.extend(words);
    libtest_mimic::run(&args, trials).exit();
}
