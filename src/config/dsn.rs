//! Connection strings: `${ENV_VAR}` interpolation and password masking.
//!
//! A [`Dsn`] holds a libpq key=value string or a `postgres://` URL. Its `Debug` and
//! `Display` show it with any password replaced by `****`, so a config can be logged or
//! printed in an error without leaking a secret; [`Dsn::expose`] is the only way to the
//! raw text and is for handing it to the driver.

use std::fmt;

/// A connection string whose `Debug`/`Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn(String);

impl Dsn {
    pub fn new(s: impl Into<String>) -> Dsn {
        Dsn(s.into())
    }

    /// The raw string, password included: only for passing to the driver.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The string with passwords masked.
    #[must_use]
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({:?})", self.masked())
    }
}

const MASK: &str = "****";

/// Masks `password=…` in key=value strings and `user:pass@` / `?password=` in URLs.
#[must_use]
pub fn mask(dsn: &str) -> String {
    let t = dsn.trim_start();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        mask_url(dsn)
    } else {
        mask_key_value(dsn).unwrap_or_else(|| "<dsn hidden: does not parse>".to_string())
    }
}

fn mask_url(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(scheme_end);
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:{MASK}{}", &userinfo[..colon], &authority[at..]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

/// Re-emits a key=value string with the password value masked; `None` if it does not
/// tokenize (unterminated quote, key without `=`), in which case nothing is shown.
fn mask_key_value(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    loop {
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.peek().copied() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        out.push_str(&key);
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        out.push('=');
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            value.push('\'');
            let mut closed = false;
            while let Some(c) = chars.next() {
                value.push(c);
                if c == '\\' {
                    value.push(chars.next()?);
                } else if c == '\'' {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
                if c == '\\' {
                    value.push(chars.next()?);
                }
            }
        }
        if key.eq_ignore_ascii_case("password") {
            out.push_str(MASK);
        } else {
            out.push_str(&value);
        }
    }
}

/// Replaces every `${NAME}` with the value `lookup` gives for NAME. Errors name the
/// variable; they never include the rest of the string (it may hold a password).
pub fn interpolate(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${ in dsn".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name ${{{name}}} in dsn"));
        }
        let value = lookup(name).ok_or_else(|| {
            format!("environment variable {name} (used as ${{{name}}}) is not set")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_key_value_passwords() {
        assert_eq!(
            mask("host=h password=secret user=u"),
            "host=h password=**** user=u"
        );
        assert_eq!(
            mask("host=h password = 'se cr\\'et' user=u"),
            "host=h password = **** user=u"
        );
        assert_eq!(mask("PASSWORD=x"), "PASSWORD=****");
        assert_eq!(mask("host=h port=1"), "host=h port=1");
        let hidden = mask("host=h password='unterminated");
        assert!(!hidden.contains("unterminated"), "{hidden}");
    }

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask("postgres://u:secret@h:5432/db?sslmode=require&password=p2"),
            "postgres://u:****@h:5432/db?sslmode=require&password=****"
        );
        assert_eq!(mask("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(mask("postgres://u:p%40ss@h"), "postgres://u:****@h");
    }

    #[test]
    fn debug_and_display_never_show_the_password() {
        let d = Dsn::new("host=h password=hunter2");
        assert!(!format!("{d}").contains("hunter2"));
        assert!(!format!("{d:?}").contains("hunter2"));
        assert_eq!(d.expose(), "host=h password=hunter2");
    }

    #[test]
    fn interpolates_env_vars() {
        let env = |k: &str| (k == "PW").then(|| "s3cret".to_string());
        assert_eq!(
            interpolate("host=h password=${PW}", env).unwrap(),
            "host=h password=s3cret"
        );
        assert_eq!(interpolate("no vars", env).unwrap(), "no vars");
        let e = interpolate("password=${NOPE}", env).unwrap_err();
        assert!(e.contains("NOPE"), "{e}");
        assert!(interpolate("x=${PW", env).is_err());
    }
}
