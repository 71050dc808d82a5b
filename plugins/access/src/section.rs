//! The `[access]` section: the cidr table's file and the action for its
//! `reject` entries. The file is read, relative to the config file's
//! folder, when the section is checked.

use std::path::PathBuf;
use std::sync::Arc;

use doorman_gate_api::section::read_named_file;
use doorman_gate_api::{
    Action, BuildError, Gate, GateSection, Resources, SectionContext, SectionError,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{AccessError, AccessList};

/// The `[access]` section.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// A Postfix cidr table (`network permit|reject|dunno`), relative to
    /// the config file's folder.
    pub file: Option<PathBuf>,
    /// Networks permitted before the table's entries (postscreen's
    /// `permit_mynetworks` with Postfix's `mynetworks`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub permit: Vec<ipnet::IpNet>,
    /// What to do with the table's `reject` entries: `ignore`, `enforce`
    /// or `drop`.
    #[serde(default)]
    pub action: Action,
    /// The table, read by [`GateSection::check`].
    #[serde(skip)]
    pub list: Option<AccessList>,
}

impl GateSection for AccessSection {
    fn check(&mut self, shared: &SectionContext) -> Result<(), SectionError> {
        let Some(file) = &self.file else {
            if !self.permit.is_empty() {
                let empty = AccessList::parse("", std::path::Path::new(""), self.action)
                    .map_err(|error| SectionError::key("permit", error.to_string()))?;
                self.list = Some(empty.permitting_first(&self.permit));
            }
            return Ok(());
        };
        let resolved = shared.base.join(file);
        let text = read_named_file(&resolved).map_err(|error| {
            SectionError::key(
                "file",
                format!(
                    "file = {:?}: cannot read: {error}",
                    resolved.display().to_string()
                ),
            )
        })?;
        let list = AccessList::parse(&text, &resolved, self.action).map_err(
            |AccessError::Syntax {
                 path,
                 line,
                 message,
             }| SectionError::File {
                path,
                line,
                message,
            },
        )?;
        self.file = Some(resolved);
        self.list = Some(list.permitting_first(&self.permit));
        Ok(())
    }

    fn build(
        &self,
        _: &SectionContext,
        _: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        Ok(self
            .list
            .clone()
            .map(|list| Arc::new(list) as Arc<dyn Gate>))
    }
}
