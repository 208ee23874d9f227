//! Placeholder: replaced by the Daraja client work.
#[derive(Debug, thiserror::Error)]
pub enum DarajaError {
    #[error("placeholder")]
    Placeholder,
}
