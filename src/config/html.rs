//! The HTML keys of an endpoint (`css`, `attr`, `items_css`) as written,
//! and what they become: the [`Pick`] that `formats::html` applies. A
//! selector is parsed while the config is read, so a bad one is reported
//! at its line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::formats::html::{Css, Field, Pick};

impl<'de> Deserialize<'de> for Css {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Css, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// `css = "span.price"` or `css = { price = "span.price", link = { css = "a", attr = "href" } }`.
#[derive(Debug)]
pub enum CssConfig {
    One(Css),
    Named(Vec<(String, FieldConfig)>),
}

/// A named field: a selector, or `{ css = "...", attr = "..." }`.
#[derive(Debug)]
pub struct FieldConfig {
    css: Css,
    attr: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldTable {
    css: Css,
    attr: Option<String>,
}

impl<'de> Deserialize<'de> for CssConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CssConfig, D::Error> {
        struct CssVisitor;
        impl<'de> Visitor<'de> for CssVisitor {
            type Value = CssConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CSS selector, or a table of named selectors")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<CssConfig, E> {
                text.parse().map(CssConfig::One).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CssConfig, A::Error> {
                let mut fields = Vec::new();
                while let Some((name, field)) = map.next_entry::<String, FieldConfig>()? {
                    fields.push((name, field));
                }
                Ok(CssConfig::Named(fields))
            }
        }
        deserializer.deserialize_any(CssVisitor)
    }
}

impl<'de> Deserialize<'de> for FieldConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldConfig, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = FieldConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CSS selector, or `{ css = \"...\", attr = \"...\" }`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<FieldConfig, E> {
                let css = text.parse().map_err(E::custom)?;
                Ok(FieldConfig { css, attr: None })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldConfig, A::Error> {
                let FieldTable { css, attr } =
                    FieldTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FieldConfig { css, attr })
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// The HTML keys of one endpoint, as written.
pub struct HtmlKeys {
    pub css: Option<Spanned<CssConfig>>,
    pub attr: Option<Spanned<String>>,
    pub items_css: Option<Spanned<Css>>,
}

/// A mistake in the HTML keys: where (a byte offset) and what.
pub type Mistake = (usize, String);

impl HtmlKeys {
    /// The keys that are set, by name and position.
    fn set(&self) -> impl Iterator<Item = (&'static str, usize)> {
        [
            ("css", self.css.as_ref().map(|v| v.span().start)),
            ("attr", self.attr.as_ref().map(|v| v.span().start)),
            ("items_css", self.items_css.as_ref().map(|v| v.span().start)),
        ]
        .into_iter()
        .filter_map(|(name, start)| start.map(|start| (name, start)))
    }

    /// What `format = "html"` picks (`format_start`: where the format is
    /// written), or every mistake; without `format = "html"`, the keys must
    /// all be absent.
    pub fn compile(self, html: bool, format_start: usize) -> Result<Option<Pick>, Vec<Mistake>> {
        if !html {
            let mistakes: Vec<Mistake> = self
                .set()
                .map(|(name, start)| {
                    (
                        start,
                        format!("`{name}` is for HTML pages: set `format = \"html\"` too"),
                    )
                })
                .collect();
            return match mistakes.is_empty() {
                true => Ok(None),
                false => Err(mistakes),
            };
        }
        let HtmlKeys {
            css,
            attr,
            items_css,
        } = self;
        let mut mistakes = Vec::new();
        let attr = attr.map(|attr| {
            if attr.get_ref().trim().is_empty() {
                mistakes.push((
                    attr.span().start,
                    "`attr` is empty: name an attribute, e.g. `attr = \"href\"`".to_string(),
                ));
            }
            attr.into_inner()
        });
        let field = |css: Css, own: Option<String>| Field {
            css,
            attr: own.or_else(|| attr.clone()),
        };
        let fields = |named: Vec<(String, FieldConfig)>| -> Vec<(String, Field)> {
            named
                .into_iter()
                .map(|(name, config)| (name, field(config.css, config.attr)))
                .collect()
        };
        let Some(css) = css else {
            let start = items_css.as_ref().map_or(format_start, |v| v.span().start);
            mistakes.push((start, "`format = \"html\"` needs `css`: e.g. `css = \"span.price\"`, or a table of named selectors".to_string()));
            return Err(mistakes);
        };
        let css_start = css.span().start;
        let pick = match (css.into_inner(), items_css) {
            (CssConfig::Named(named), _) if named.is_empty() => {
                mistakes.push((
                    css_start,
                    "`css` is an empty table: name at least one selector".to_string(),
                ));
                None
            }
            (CssConfig::One(one), None) => Some(Pick::All(field(one, None))),
            (CssConfig::Named(named), None) => Some(Pick::Named(fields(named))),
            (CssConfig::Named(named), Some(block)) => Some(Pick::Items {
                block: block.into_inner(),
                fields: fields(named),
            }),
            (CssConfig::One(_), Some(block)) => {
                mistakes.push((
                    block.span().start,
                    "`items_css` needs a table of field selectors in `css`: e.g. `css = { version = \"h2\", link = { css = \"a\", attr = \"href\" } }`".to_string(),
                ));
                None
            }
        };
        match (pick, mistakes.is_empty()) {
            (Some(pick), true) => Ok(Some(pick)),
            _ => Err(mistakes),
        }
    }
}
