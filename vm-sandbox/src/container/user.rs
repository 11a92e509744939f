//! Resolving `user[:group]` against the container's /etc/passwd and /etc/group.

use std::fs;

/// A resolved identity.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
    pub(crate) home: String,
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) with the given
/// passwd and group file contents, as runc's user lookup does: a numeric user missing from
/// passwd is allowed (gid 0, home `/`), a missing name is an error.
pub(crate) fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 7)
        .collect();
    let found = entries
        .iter()
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let (uid, mut gid, home, name) = match (found, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| format!("bad uid in /etc/passwd for {}", f[0]))?,
            f[3].parse()
                .map_err(|_| format!("bad gid in /etc/passwd for {}", f[0]))?,
            f[5].to_string(),
            Some(f[0]),
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ));
        }
    };
    let groups_file: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    if let Some(g) = grp {
        gid = match groups_file.iter().find(|f| f[0] == g) {
            Some(f) => f[2]
                .parse()
                .map_err(|_| format!("bad gid in /etc/group for {g}"))?,
            None => g.parse().map_err(|_| {
                format!("unable to find group {g}: no matching entries in group file")
            })?,
        };
    }
    // Supplementary groups: those whose member list names the user (not the primary group),
    // and only when the group was not given explicitly, as Docker (runc, containerd) does.
    let mut groups = Vec::new();
    if grp.is_none()
        && let Some(name) = name
    {
        for f in &groups_file {
            if f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && !groups.contains(&g)
            {
                groups.push(g);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

/// Reads the container's files (missing files are empty) and resolves `spec`.
pub(crate) fn resolve_in_root(spec: &str) -> Result<Identity, String> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nweb:x:1000:\nstaff:x:50:web,other\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let r = |s| resolve(s, PASSWD, GROUP);
        assert_eq!(
            r("").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
        assert_eq!(
            r("web").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![50],
                home: "/home/web".into()
            }
        );
        assert_eq!(
            r("1000:staff").unwrap(),
            Identity {
                uid: 1000,
                gid: 50,
                groups: vec![],
                home: "/home/web".into()
            }
        );
        assert_eq!(
            r("4242").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                groups: vec![],
                home: "/".into()
            }
        );
        assert_eq!(r("4242:7").unwrap().gid, 7);
        assert!(
            r("nobody")
                .unwrap_err()
                .contains("unable to find user nobody")
        );
        assert!(
            r("web:nogroup")
                .unwrap_err()
                .contains("unable to find group nogroup")
        );
    }
}
