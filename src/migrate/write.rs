//! A doorman.toml as the migration writes it: tables, keys and comments
//! in order, strings quoted as TOML quotes them.

/// The file being written.
#[derive(Debug, Default)]
pub(super) struct Toml {
    text: String,
}

impl Toml {
    /// `# text`, its control characters (a CR in main.cf) as `?`, which a
    /// TOML comment could not hold.
    pub fn comment(&mut self, text: &str) {
        let text: String = text
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        self.text.push_str(&format!("# {text}\n"));
    }

    /// An empty line.
    pub fn blank(&mut self) {
        self.text.push('\n');
    }

    /// `[name]`, after an empty line.
    pub fn table(&mut self, name: &str) {
        self.text.push_str(&format!("\n[{name}]\n"));
    }

    /// `[[name]]`, after an empty line.
    pub fn array_table(&mut self, name: &str) {
        self.text.push_str(&format!("\n[[{name}]]\n"));
    }

    /// `key = "value"`.
    pub fn string(&mut self, key: &str, value: &str) {
        self.raw(key, &quote(value));
    }

    /// `key = ["a", "b"]`.
    pub fn strings(&mut self, key: &str, values: &[String]) {
        let items: Vec<String> = values.iter().map(|value| quote(value)).collect();
        self.raw(key, &format!("[{}]", items.join(", ")));
    }

    /// `key = value`, the value already TOML.
    pub fn raw(&mut self, key: &str, value: &str) {
        self.text.push_str(&format!("{key} = {value}\n"));
    }

    /// The file's text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// `value` as a TOML basic string.
pub(super) fn quote(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}
