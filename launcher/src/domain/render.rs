//! Rendering: the [`DomainPlan`] goes through the templates of `domxml-templates/` (embedded at
//! compile time; `--template-dir DIR` overrides any of them by file name). Templates hold
//! layout only. Every value is XML-escaped by the formatter (`& < > " '` and the whitespace
//! characters that attribute normalisation would otherwise eat), so text from the spec comes
//! out intact. The result is checked ([`super::check`]) before it is returned.

use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use super::plan::DomainPlan;
use super::{check, DomainError};

/// The root template.
pub const ROOT: &str = "domain.xml";

/// Every template, by name, with its built-in text. The root includes the others, in order.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "domain.xml",
        include_str!("../../../domxml-templates/domain.xml"),
    ),
    (
        "metadata.xml",
        include_str!("../../../domxml-templates/metadata.xml"),
    ),
    (
        "resources.xml",
        include_str!("../../../domxml-templates/resources.xml"),
    ),
    (
        "sysinfo.xml",
        include_str!("../../../domxml-templates/sysinfo.xml"),
    ),
    ("os.xml", include_str!("../../../domxml-templates/os.xml")),
    (
        "features.xml",
        include_str!("../../../domxml-templates/features.xml"),
    ),
    ("cpu.xml", include_str!("../../../domxml-templates/cpu.xml")),
    (
        "clock.xml",
        include_str!("../../../domxml-templates/clock.xml"),
    ),
    (
        "disks.xml",
        include_str!("../../../domxml-templates/disks.xml"),
    ),
    (
        "controllers.xml",
        include_str!("../../../domxml-templates/controllers.xml"),
    ),
    (
        "interfaces.xml",
        include_str!("../../../domxml-templates/interfaces.xml"),
    ),
    (
        "devices.xml",
        include_str!("../../../domxml-templates/devices.xml"),
    ),
    (
        "extra-devices.xml",
        include_str!("../../../domxml-templates/extra-devices.xml"),
    ),
    (
        "extra.xml",
        include_str!("../../../domxml-templates/extra.xml"),
    ),
];

/// Escapes text for XML content and attribute values alike.
pub fn xml_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

/// A template environment: built-ins, overridden by `template_dir` where a file of the same
/// name exists there.
pub struct Renderer {
    env: Environment<'static>,
    overridden: Vec<String>,
}

impl Renderer {
    pub fn new(template_dir: Option<&Path>) -> Result<Self, DomainError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(|_| AutoEscape::Custom("xml"));
        env.set_formatter(|out, _state, value| {
            let mut s = String::new();
            if value.is_none() || value.is_undefined() {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::UndefinedError,
                    "a template printed a value the plan does not have (none)",
                ));
            }
            if value.is_safe() {
                s.push_str(&value.to_string());
            } else if let Some(text) = value.as_str() {
                xml_escape(text, &mut s);
            } else {
                xml_escape(&value.to_string(), &mut s);
            }
            out.write_str(&s).map_err(|_| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "writing output")
            })
        });
        let mut overridden = Vec::new();
        for (name, builtin) in TEMPLATES {
            let text = match template_dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(p) => {
                    overridden.push(name.to_string());
                    std::fs::read_to_string(&p).map_err(|e| DomainError::Template {
                        template: p.display().to_string(),
                        message: format!("reading the override: {e}"),
                        overridden: true,
                    })?
                }
                None => builtin.to_string(),
            };
            env.add_template_owned(name.to_string(), text)
                .map_err(|e| DomainError::Template {
                    template: describe(name, template_dir, overridden.contains(&name.to_string())),
                    message: format!("{e:#}"),
                    overridden: overridden.contains(&name.to_string()),
                })?;
        }
        if let Some(dir) = template_dir {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().to_string();
                    if !TEMPLATES.iter().any(|(t, _)| *t == n) {
                        tracing::warn!(file = %e.path().display(), "--template-dir: not the name of a template; ignored");
                    }
                }
            }
        }
        Ok(Renderer { env, overridden })
    }

    fn is_overridden(&self, name: &str) -> bool {
        self.overridden.iter().any(|o| o == name)
    }

    /// Renders one template with the plan as `plan`.
    pub fn render_template(&self, name: &str, plan: &DomainPlan) -> Result<String, DomainError> {
        let ov = self.is_overridden(name);
        let t = self
            .env
            .get_template(name)
            .map_err(|e| DomainError::Template {
                template: name.into(),
                message: format!("{e:#}"),
                overridden: ov,
            })?;
        t.render(minijinja::context! { plan => Value::from_serialize(plan) })
            .map_err(|e| {
                // Name the template that actually failed (an include may be the culprit).
                let failing = e.name().unwrap_or(name).to_string();
                DomainError::Template {
                    overridden: self.is_overridden(&failing),
                    template: failing,
                    message: format!("{e:#}"),
                }
            })
    }

    /// Renders the domain and checks it; a malformed result names the template responsible.
    pub fn render(&self, plan: &DomainPlan) -> Result<String, DomainError> {
        let xml = self.render_template(ROOT, plan)?;
        if let Err(message) = check::check_document(&xml) {
            // Find the culprit: every included template must be a well-formed fragment.
            for (name, _) in TEMPLATES.iter().filter(|(n, _)| *n != ROOT) {
                let part = self.render_template(name, plan)?;
                if let Err(m) = check::check_fragment(&part) {
                    return Err(DomainError::Check {
                        template: name.to_string(),
                        message: m,
                        overridden: self.is_overridden(name),
                    });
                }
            }
            return Err(DomainError::Check {
                template: ROOT.into(),
                message,
                overridden: self.is_overridden(ROOT),
            });
        }
        Ok(xml)
    }
}

fn describe(name: &str, dir: Option<&Path>, overridden: bool) -> String {
    match (dir, overridden) {
        (Some(d), true) => PathBuf::from(d).join(name).display().to_string(),
        _ => name.to_string(),
    }
}

/// Renders and checks the plan (the run helper's call).
pub fn render(plan: &DomainPlan, template_dir: Option<&Path>) -> Result<String, DomainError> {
    Renderer::new(template_dir)?.render(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attribute_whitespace() {
        let mut s = String::new();
        xml_escape("p&ss<w>rd \"q\" 'a'\n\t", &mut s);
        assert_eq!(
            s,
            "p&amp;ss&lt;w&gt;rd &quot;q&quot; &apos;a&apos;&#10;&#9;"
        );
    }
}
