//! The live script set of a gateway: the three built-in scripts every gateway runs
//! ([`ScriptName`]) and the user-named handler scripts `message_map` loads, addressed by
//! name for deploys, rollbacks and listing.

use super::{Auth, Handlers, Rooms, Router, ScriptError, ScriptInfo, ScriptSource};

/// A built-in script: every gateway runs one of each (docs/scripting.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptName {
    /// Login (`auth-script` world).
    Auth,
    /// Routing (`router-script` world).
    Router,
    /// Room logic (`rooms-script` world).
    Rooms,
}

impl ScriptName {
    pub const ALL: [Self; 3] = [Self::Auth, Self::Router, Self::Rooms];

    /// The name in the admin API, the manifest, metrics and config (`[scripts.<name>]`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Router => "router",
            Self::Rooms => "rooms",
        }
    }

    /// The built-in script called `name`, if one is.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for ScriptName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every script of a gateway.
pub struct Scripts {
    pub auth: Auth,
    pub router: Router,
    pub rooms: Rooms,
    /// User-named handler scripts and the message ids `message_map` gives them.
    pub handlers: Handlers,
}

impl Scripts {
    /// Whether `name` is a built-in script or a loaded handler script.
    pub fn has(&self, name: &str) -> bool {
        ScriptName::parse(name).is_some() || self.handlers.get(name).is_some()
    }

    /// The live version's source of script `name` (its config, to keep on a deploy that
    /// brings none). Errors: [`ScriptError::Unknown`].
    pub fn source(&self, name: &str) -> Result<ScriptSource, ScriptError> {
        match ScriptName::parse(name) {
            Some(ScriptName::Auth) => Ok(self.auth.source()),
            Some(ScriptName::Router) => Ok(self.router.source()),
            Some(ScriptName::Rooms) => Ok(self.rooms.source()),
            None => match self.handlers.get(name) {
                Some(handler) => Ok(handler.source()),
                None => Err(ScriptError::Unknown { script: name.into() }),
            },
        }
    }

    /// Deploys `source` live as script `source.name` (the deploy pipeline,
    /// [`super::deploy`]); the running version stays on any error. Errors: the pipeline's,
    /// [`ScriptError::Unknown`] for a name that is neither built in nor loaded.
    pub async fn deploy(&self, source: ScriptSource) -> Result<ScriptInfo, ScriptError> {
        match ScriptName::parse(&source.name) {
            Some(ScriptName::Auth) => self.auth.deploy(source).await,
            Some(ScriptName::Router) => self.router.deploy(source).await,
            Some(ScriptName::Rooms) => self.rooms.deploy(source).await,
            None => match self.handlers.get(&source.name) {
                Some(handler) => handler.deploy(source).await,
                None => Err(ScriptError::Unknown { script: source.name }),
            },
        }
    }

    /// Puts the previous version of script `name` back. Errors: [`ScriptError::NoPrevious`],
    /// [`ScriptError::Unknown`], or the previous version failing to start again.
    pub async fn rollback(&self, name: &str) -> Result<ScriptInfo, ScriptError> {
        match ScriptName::parse(name) {
            Some(ScriptName::Auth) => self.auth.rollback().await,
            Some(ScriptName::Router) => self.router.rollback().await,
            Some(ScriptName::Rooms) => self.rooms.rollback().await,
            None => match self.handlers.get(name) {
                Some(handler) => handler.rollback().await,
                None => Err(ScriptError::Unknown { script: name.into() }),
            },
        }
    }

    /// Every script's live version: the built-in ones, then the handlers.
    pub fn infos(&self) -> Vec<ScriptInfo> {
        let mut infos = vec![self.auth.info(), self.router.info(), self.rooms.info()];
        infos.extend(self.handlers.infos());
        infos
    }
}

#[cfg(test)]
mod tests {
    use super::ScriptName;

    #[test]
    fn built_in_names_round_trip_and_are_not_handler_names() {
        for name in ScriptName::ALL {
            assert_eq!(ScriptName::parse(name.name()), Some(name));
            assert!(crate::maps::check_script_name(name.name()).is_err(), "{name} is reserved");
        }
        assert_eq!(ScriptName::parse("echo"), None);
    }
}
