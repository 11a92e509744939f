//! Heredoc markers on RUN/COPY/ADD lines (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`).

use crate::node::shell_words;

/// A heredoc opened on an instruction line, before its body is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) name: String,
    pub(crate) expand: bool,
    pub(crate) chomp: bool,
    pub(crate) fd: Option<u32>,
}

/// Instructions whose lines may open heredocs.
pub(crate) fn allows_heredocs(keyword: &str) -> bool {
    matches!(keyword, "RUN" | "COPY" | "ADD")
}

/// The heredoc markers in a line, in order. A marker is a shell word of the form
/// `[fd]<<[-]NAME` where NAME has no `<`; quoting any part of NAME turns expansion off.
pub(crate) fn markers(line: &str, escape: char) -> Vec<Marker> {
    let mut out = Vec::new();
    if !line.contains("<<") {
        return out;
    }
    for word in shell_words(line, escape) {
        let digits = word.chars().take_while(|c| c.is_ascii_digit()).count();
        let Some(after) = word[digits..].strip_prefix("<<") else {
            continue;
        };
        let (chomp, name) = match after.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, after),
        };
        if name.is_empty() || name.contains('<') {
            continue;
        }
        let quoted = name.contains(['"', '\'']);
        let unquoted: String = {
            let mut s = String::new();
            let mut chars = name.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' | '\'' => {}
                    c if c == escape => s.extend(chars.next()),
                    c => s.push(c),
                }
            }
            s
        };
        if unquoted.is_empty() {
            continue;
        }
        let fd = if digits > 0 {
            word[..digits].parse().ok()
        } else {
            None
        };
        out.push(Marker {
            name: unquoted,
            expand: !quoted,
            chomp,
            fd,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers() {
        let m = markers("cat <<EOF >a && cat <<-'END' 3<<\"X\" <<", '\\');
        assert_eq!(
            m,
            vec![
                Marker {
                    name: "EOF".into(),
                    expand: true,
                    chomp: false,
                    fd: None
                },
                Marker {
                    name: "END".into(),
                    expand: false,
                    chomp: true,
                    fd: None
                },
                Marker {
                    name: "X".into(),
                    expand: false,
                    chomp: false,
                    fd: Some(3)
                },
            ]
        );
        assert!(
            markers("echo '<<EOF'", '\\').is_empty(),
            "a quoted << is not a heredoc"
        );
        assert!(markers("a << b", '\\').is_empty());
    }
}
