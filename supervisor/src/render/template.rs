//! Filling `@NAME@` placeholders in the configuration templates. The templates are
//! real configuration files (see templates/), so they read as what they produce.

/// Replaces every `@NAME@` with its value. A placeholder left unfilled is a bug in
/// postmaster, caught by the tests of every template.
pub(crate) fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("@{name}@"), value);
    }
    out
}

/// The placeholders still in `text`.
#[cfg(test)]
pub(crate) fn unfilled(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('@') {
            found.push(after[..len].to_string());
            rest = &after[len + 1..];
        } else {
            rest = after;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_finds_leftovers() {
        let t = "a = @A@\nb = postmaster@@DOMAIN@\nc = @C@";
        let out = fill(t, &[("A", "1".into()), ("DOMAIN", "example.org".into())]);
        assert_eq!(out, "a = 1\nb = postmaster@example.org\nc = @C@");
        assert_eq!(unfilled(&out), vec!["C"]);
    }
}
