//! State enums stored as upper-case strings (`"PENDING"`, `"ROLLING"`), the way operators read
//! them in the API and in MongoDB.

/// A stored state string this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} state {value:?}")]
pub struct UnknownState {
    pub kind: &'static str,
    pub value: String,
}

/// Declares a state enum with its stored strings: `as_str`, `Display`, `FromStr`, serde as the
/// string, `Into<Bson>` (for `doc!`), `of(doc)` reading the `state`-like field of a record.
macro_rules! stored_state {
    ($(#[$meta:meta])* pub enum $name:ident ($kind:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The state stored in `field` of `doc`, if it is one of ours.
            pub fn of(doc: &mongodb::bson::Document, field: &str) -> Option<$name> {
                doc.get_str(field).ok()?.parse().ok()
            }

            /// `states` as a BSON array, for `$in` / `$nin` filters.
            pub fn any_of(states: &[$name]) -> mongodb::bson::Bson {
                mongodb::bson::Bson::Array(states.iter().map(|s| (*s).into()).collect())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownState;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::UnknownState { kind: $kind, value: s.to_owned() }),
                }
            }
        }

        impl From<$name> for mongodb::bson::Bson {
            fn from(state: $name) -> mongodb::bson::Bson {
                mongodb::bson::Bson::String(state.as_str().to_owned())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::nodes::DrainState;
    use crate::workflows::{DeploymentState, ModuleState, MutationStep};

    #[test]
    fn every_state_round_trips_through_its_string() {
        for s in DrainState::ALL {
            assert_eq!(s.as_str().parse::<DrainState>(), Ok(*s));
        }
        for s in DeploymentState::ALL {
            assert_eq!(s.as_str().parse::<DeploymentState>(), Ok(*s));
        }
        for s in ModuleState::ALL {
            assert_eq!(s.as_str().parse::<ModuleState>(), Ok(*s));
        }
        for s in MutationStep::ALL {
            assert_eq!(s.as_str().parse::<MutationStep>(), Ok(*s));
        }
        assert!("draining".parse::<DrainState>().is_err());
    }

    #[test]
    fn states_go_into_documents_as_their_strings() {
        let doc = mongodb::bson::doc! { "state": DrainState::Draining };
        assert_eq!(doc.get_str("state"), Ok("DRAINING"));
        assert_eq!(DrainState::of(&doc, "state"), Some(DrainState::Draining));
    }
}
