use anyhow::{anyhow, Result};
use clap::Args;
use cloze_search::{Fusion, FusionSettings};

/// The fusion the flags ask for, on top of the default; None if no flag was given. An error
/// names the flag, as clap knows it from the settings' own definition.
pub fn requested(flags: &FusionSettings) -> Result<Option<Fusion>> {
    Fusion::requested(flags).map_err(|error| {
        let command = FusionSettings::augment_args(clap::Command::new("fusion"));
        let flag = command
            .get_arguments()
            .find(|arg| arg.get_id().as_str() == format!("fusion.{}", error.param))
            .and_then(|arg| arg.get_long())
            .unwrap_or(error.param);
        anyhow!("--{flag}: {}", error.message)
    })
}

/// `--expansion-weight`: a weight the neighbours' text can take.
pub fn parse_expansion_weight(text: &str) -> Result<f64, String> {
    let weight: f64 = text.parse().map_err(|_| format!("\"{text}\" is not a number"))?;
    cloze_index::ExpansionSettings::check_weight(weight)?;
    Ok(weight)
}
