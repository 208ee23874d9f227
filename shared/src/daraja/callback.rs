//! Placeholder: replaced by the callback parsing work.
