//! Property tests: no input makes the parser, the lexer, the linter or the .dockerignore
//! matcher panic (the same entry point the cargo-fuzz target drives), plus round-trip
//! properties of expansion.

use proptest::prelude::*;

fn dockerfile_like() -> impl Strategy<Value = String> {
    let keyword = prop::sample::select(vec![
        "FROM",
        "RUN",
        "CMD",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "LABEL",
        "EXPOSE",
        "WORKDIR",
        "USER",
        "VOLUME",
        "HEALTHCHECK",
        "ONBUILD",
        "SHELL",
        "STOPSIGNAL",
        "MAINTAINER",
        "ENTRYPOINT",
        "# escape=`",
        "#",
    ]);
    let rest = "[ -~\\t]{0,24}|\\[\"[a-z$ {}:-]{0,8}\"\\]|<<EOF|--[a-z]{1,6}=[a-z$=,/]{0,10}|\\$\\{[A-Za-z_]{1,3}[:#%/+?-]{0,2}[a-z*]{0,3}\\}";
    prop::collection::vec(
        (keyword, prop::collection::vec(rest, 0..4), prop::bool::ANY),
        0..12,
    )
    .prop_map(|lines| {
        let mut s = String::new();
        for (k, parts, cont) in lines {
            s.push_str(k);
            for p in parts {
                s.push(' ');
                s.push_str(&p);
            }
            s.push_str(if cont { " \\\n" } else { "\n" });
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        parser::fuzz_one(&s);
    }

    #[test]
    fn dockerfile_shaped_text_never_panics(s in dockerfile_like()) {
        parser::fuzz_one(&s);
    }

    #[test]
    fn single_quoted_text_is_literal(s in "[^']{0,40}") {
        let out = parser::Lexer::default().expand_word(&format!("'{s}'"), &Vec::new()).unwrap();
        prop_assert_eq!(out, s);
    }

    #[test]
    fn variables_expand_to_their_values(v in "[a-zA-Z0-9 /._-]{0,30}") {
        let env = vec![("V".to_string(), v.clone())];
        let l = parser::Lexer::default();
        prop_assert_eq!(l.expand_word("${V}", &env).unwrap(), v.clone());
        prop_assert_eq!(l.expand_word("\"$V\"", &env).unwrap(), v.clone());
        let words: Vec<String> = v.split_whitespace().map(String::from).collect();
        prop_assert_eq!(l.expand_words("$V", &env).unwrap(), words);
    }
}
