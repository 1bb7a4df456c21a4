use anyhow::{bail, Result};
use clap::Args;
use cloze_corpus::FieldMapping;

/// Which JSON fields of a corpus hold what: shared by every command that reads documents.
#[derive(Debug, Args)]
pub struct DocumentFields {
    /// The field that holds each document's id.
    #[arg(long, default_value = "_id", value_name = "FIELD")]
    id_field: String,

    /// The fields whose text is used, comma-separated. Other fields are kept as metadata.
    #[arg(long, value_delimiter = ',', default_value = "title,text", value_name = "FIELDS")]
    text_fields: Vec<String>,

    /// Which of the text fields is the title [default: title, if it is a text field].
    #[arg(long, value_name = "FIELD")]
    title_field: Option<String>,
}

impl DocumentFields {
    pub fn mapping(&self) -> Result<FieldMapping> {
        if self.text_fields.iter().any(|field| field.is_empty()) {
            bail!("--text-fields: empty field name in \"{}\"", self.text_fields.join(","));
        }
        let title_field = match &self.title_field {
            Some(field) if !self.text_fields.contains(field) => {
                bail!(
                    "--title-field {field}: not one of --text-fields ({})",
                    self.text_fields.join(",")
                )
            }
            Some(field) => Some(field.clone()),
            None => self.text_fields.iter().find(|field| *field == "title").cloned(),
        };
        Ok(FieldMapping {
            id_field: self.id_field.clone(),
            text_fields: self.text_fields.clone(),
            title_field,
            ..FieldMapping::default()
        })
    }
}
