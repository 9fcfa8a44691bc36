//! Problems found on objects during translation: shown in `/api/services`, logged, counted in
//! `maille_controller_service_errors` and (Kubernetes provider) written as Events.

use std::fmt;

use config_model::cut::{cut_message, MAX_MESSAGE};

/// Which object a problem is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectRef {
    /// Kubernetes kind (`Service`, `EndpointSlice`, ...) or `File` for a manifests file.
    pub kind: String,
    /// Namespace; empty for a file.
    pub namespace: String,
    /// Name (for a file: its path).
    pub name: String,
}

impl ObjectRef {
    /// A reference to a namespaced object.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A reference to a Service.
    pub fn service(namespace: &str, name: &str) -> Self {
        Self::new("Service", namespace, name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One problem on one object. The message names the object, the field or annotation and the
/// value, so that it reads well alone (in a log line or an Event).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Problem {
    /// The object at fault.
    pub object: ObjectRef,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    /// A problem on `object`. The message is cut to [`MAX_MESSAGE`] bytes, a backstop for
    /// values quoted in it that were not cut at their source.
    pub fn new(object: ObjectRef, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match cut_message(&message, MAX_MESSAGE) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(cut) => cut,
        };
        Problem { object, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}
