//! Placement rules an operator declares for a VM (in its libvirt domain's metadata, in a
//! simulator scenario): where it may run and with whom. They travel with the VM's state
//! in every dossier, and every solver, plan check and explanation honours them
//! ([`crate::placement::rules`]).
//!
//! A rule constrains moves: no plan moves a VM where its rules forbid, and none makes a
//! broken rule worse. A VM that already breaks a rule where it runs (declared after it
//! was placed) is not moved for that alone: DVMS repairs overloads, not rule breaches.

use serde::{Deserialize, Serialize};

/// Most host names a VM's `ban` or `fence` may list.
pub const MAX_RULE_HOSTS: usize = 16;
/// Longest host or group name, bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// One VM's rules. All empty: it may go anywhere it fits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmRules {
    /// Never moved.
    pub pin: bool,
    /// Never run on these hosts.
    pub ban: Vec<String>,
    /// Only run on these hosts (empty: any host).
    pub fence: Vec<String>,
    /// The VMs of this group never share a host (replicas of one service).
    pub spread: Option<String>,
    /// The VMs of this group always share a host (they move together).
    pub gather: Option<String>,
}

/// The XML namespace of the rules element in a libvirt domain's `<metadata>`.
pub const XML_NAMESPACE: &str = "https://github.com/dvms-rs/dvms/rules/1";
/// Longest rules element read from a domain, bytes.
pub const MAX_XML_BYTES: usize = 4096;

/// Checks a host or group name (`what` names it in the error).
pub fn check_name(what: &str, n: &str) -> Result<(), String> {
    let bad = |c: char| c.is_control() || c.is_whitespace() || c == ',';
    if n.is_empty() || n.len() > MAX_NAME_BYTES || n.chars().any(bad) {
        return Err(format!(
            "{what} name {n:?}: 1 to {MAX_NAME_BYTES} bytes, no spaces, commas or control characters"
        ));
    }
    Ok(())
}

/// Text escaped for XML content and attribute values (either quote).
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml_unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').ok_or("an unterminated entity")? + i;
        out.push(match &rest[i + 1..end] {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e => return Err(format!("an unknown entity &{e};")),
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl VmRules {
    pub fn is_empty(&self) -> bool {
        *self == VmRules::default()
    }

    /// Bounded lists and names (rules from a peer or a file are checked before use); a
    /// host both banned and fenced, or a VM fenced to nowhere, is refused.
    pub fn validate(&self) -> Result<(), String> {
        for (what, list) in [("ban", &self.ban), ("fence", &self.fence)] {
            if list.len() > MAX_RULE_HOSTS {
                return Err(format!(
                    "{what} lists {} hosts (at most {MAX_RULE_HOSTS})",
                    list.len()
                ));
            }
            for h in list {
                check_name(what, h)?;
            }
        }
        for (what, g) in [("spread", &self.spread), ("gather", &self.gather)] {
            if let Some(g) = g {
                check_name(what, g)?;
            }
        }
        if let Some(h) = self.fence.iter().find(|h| self.ban.contains(h)) {
            return Err(format!("host {h:?} is both banned and fenced"));
        }
        Ok(())
    }

    /// Whether its ban and fence let it run on the host named `host`.
    pub fn allows(&self, host: &str) -> bool {
        !self.ban.iter().any(|h| h == host)
            && (self.fence.is_empty() || self.fence.iter().any(|h| h == host))
    }

    /// The rules as the element a libvirt domain's `<metadata>` holds
    /// (`<dvms:rules xmlns:dvms="..." spread="web" ban="h2,h3"/>`).
    pub fn to_xml(&self) -> String {
        let mut attrs = String::new();
        let mut put = |k: &str, v: &str| attrs.push_str(&format!(" {k}=\"{}\"", xml_escape(v)));
        if self.pin {
            put("pin", "yes");
        }
        if !self.ban.is_empty() {
            put("ban", &self.ban.join(","));
        }
        if !self.fence.is_empty() {
            put("fence", &self.fence.join(","));
        }
        if let Some(g) = &self.spread {
            put("spread", g);
        }
        if let Some(g) = &self.gather {
            put("gather", g);
        }
        format!("<dvms:rules xmlns:dvms=\"{XML_NAMESPACE}\"{attrs}/>")
    }

    /// Rules from the element [`VmRules::to_xml`] writes (as libvirt gives it back: any
    /// prefix, namespace declarations ignored). Unknown attributes, bad values and
    /// elements longer than [`MAX_XML_BYTES`] are refused with what is wrong.
    pub fn from_xml(xml: &str) -> Result<VmRules, String> {
        if xml.len() > MAX_XML_BYTES {
            return Err(format!("{} bytes (at most {MAX_XML_BYTES})", xml.len()));
        }
        let start = xml.find('<').ok_or("no element")? + 1;
        let body = &xml[start..];
        let end = body.find('>').ok_or("an unterminated element")?;
        let body = body[..end].trim_end_matches('/');
        let name_end = body.find(|c: char| c.is_whitespace()).unwrap_or(body.len());
        let name = &body[..name_end];
        if name.rsplit(':').next() != Some("rules") {
            return Err(format!("element <{name}>, expected <rules>"));
        }
        let mut rules = VmRules::default();
        let mut rest = body[name_end..].trim_start();
        while !rest.is_empty() {
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("attribute without value: {rest:?}"))?;
            let key = rest[..eq].trim();
            let after = rest[eq + 1..].trim_start();
            let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
            let quote = quote.ok_or_else(|| format!("unquoted value of {key}"))?;
            let close = after[1..]
                .find(quote)
                .ok_or_else(|| format!("unterminated value of {key}"))?;
            let value = xml_unescape(&after[1..1 + close])?;
            rest = after[close + 2..].trim_start();
            let list = |v: &str| -> Vec<String> {
                v.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            };
            let group = |v: &str| Some(v.trim().to_owned()).filter(|x| !x.is_empty());
            match key {
                k if k == "xmlns" || k.starts_with("xmlns:") => {}
                "pin" => {
                    rules.pin = match value.as_str() {
                        "yes" | "true" => true,
                        "no" | "false" => false,
                        v => return Err(format!("pin={v:?}: yes or no")),
                    }
                }
                "ban" => rules.ban = list(&value),
                "fence" => rules.fence = list(&value),
                "spread" => rules.spread = group(&value),
                "gather" => rules.gather = group(&value),
                k => {
                    return Err(format!(
                        "unknown attribute {k:?} (pin, ban, fence, spread, gather)"
                    ))
                }
            }
        }
        rules.validate()?;
        Ok(rules)
    }

    /// The rules in a line, for logs and views (`pin, ban a b, spread web`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.pin {
            parts.push("pin".to_owned());
        }
        if !self.ban.is_empty() {
            parts.push(format!("ban {}", self.ban.join(" ")));
        }
        if !self.fence.is_empty() {
            parts.push(format!("fence {}", self.fence.join(" ")));
        }
        if let Some(g) = &self.spread {
            parts.push(format!("spread {g}"));
        }
        if let Some(g) = &self.gather {
            parts.push(format!("gather {g}"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_and_fence_decide_where_a_vm_may_run_and_bad_rules_are_named() {
        let r = VmRules {
            ban: vec!["h2".into()],
            ..VmRules::default()
        };
        assert!(r.allows("h1") && !r.allows("h2"));
        let f = VmRules {
            fence: vec!["h1".into(), "h3".into()],
            ..VmRules::default()
        };
        assert!(f.allows("h3") && !f.allows("h2"));
        assert!(VmRules::default().allows("any") && VmRules::default().is_empty());
        let both = VmRules {
            ban: vec!["h1".into()],
            fence: vec!["h1".into()],
            ..VmRules::default()
        };
        assert!(both.validate().unwrap_err().contains("both"));
        let long = VmRules {
            spread: Some("x".repeat(65)),
            ..VmRules::default()
        };
        assert!(long.validate().unwrap_err().contains("spread"));
        let many = VmRules {
            ban: (0..17).map(|i| format!("h{i}")).collect(),
            ..VmRules::default()
        };
        assert!(many.validate().unwrap_err().contains("17 hosts"));
        let xml = VmRules {
            spread: Some("a&b".into()),
            ..f.clone()
        };
        assert_eq!(VmRules::from_xml(&xml.to_xml()), Ok(xml));
        // As libvirt gives it back: its own prefix, the namespace declared on it.
        let back = r#"<x:rules xmlns:x="https://github.com/dvms-rs/dvms/rules/1" pin='yes' ban="h1, h2"/>"#;
        let r = VmRules::from_xml(back).unwrap();
        assert!(r.pin && r.ban == ["h1", "h2"]);
        for bad in [
            "<rules colour=\"red\"/>",
            "<rules pin=\"maybe\"/>",
            "<other/>",
            "<rules spread=\"a\"",
            "<rules ban=\"h1\" fence=\"h1\"/>",
            "<rules spread=\"&bogus;\"/>",
        ] {
            assert!(VmRules::from_xml(bad).is_err(), "{bad} accepted");
        }
        assert!(VmRules::from_xml(&format!("<rules{}/>", " ".repeat(5000))).is_err());
        assert_eq!(
            VmRules {
                pin: true,
                spread: Some("web".into()),
                ..f
            }
            .describe(),
            "pin, fence h1 h3, spread web"
        );
    }
}
