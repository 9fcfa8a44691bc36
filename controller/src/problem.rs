//! Problems found on objects during translation: shown in `/api/services`, logged, counted in
//! `maille_controller_service_errors` and (Kubernetes provider) written as Events.

use std::fmt;

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
    /// A problem on `object`.
    pub fn new(object: ObjectRef, message: impl Into<String>) -> Self {
        Problem {
            object,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}
