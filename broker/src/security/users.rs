//! SCRAM users: per user and mechanism the salt, iteration count, StoredKey and ServerKey
//! (RFC 5802), never the password. Kept in `<data_dir>/security/users.json`, rewritten whole
//! and atomically on every change (temporary file, fsync, rename, fsync of the folder); a
//! change whose write fails changes nothing, in memory or on disk.
//!
//! One process at a time holds `<data_dir>/security/users.lock` (an exclusive `flock`), so
//! the offline `strand-broker user add` refuses to edit the file under a running broker, which
//! would not see the change and would overwrite it on its next one.
//!
//! Unknown users get a fake credential, derived from a per-process secret and the user name, so
//! that a SCRAM exchange for a user that does not exist looks like one with a wrong password
//! (same salt on every try, same iteration count) and takes as long.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use strand_client::scram::{self, ScramMechanism, StoredCredential};

/// Folder under the data directory for security state (users, ACLs).
pub const SECURITY_DIR: &str = "security";
const USERS_FILE: &str = "users.json";
const LOCK_FILE: &str = "users.lock";
/// Longest password accepted where the broker sees one (PLAIN, `strand-broker user add`).
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// Limits and defaults of the user store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersConfig {
    /// PBKDF2 iterations of credentials the broker salts itself. Default 4096, Kafka's
    /// minimum; at most [`scram::ITERATIONS_MAX`].
    pub iterations_default: u32,
    /// Users at most. Default 10,000.
    pub users_max: usize,
    /// Longest user name, in bytes. Default 256.
    pub name_bytes_max: usize,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            iterations_default: scram::ITERATIONS_MIN,
            users_max: 10_000,
            name_bytes_max: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid users file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is held by another process (a running broker?): stop it first")]
    Locked { path: PathBuf },
    #[error("user name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid credential: {0}")]
    InvalidCredential(String),
    #[error("the user limit ({max}) is reached")]
    LimitReached { max: usize },
    #[error("no user {0:?}")]
    NotFound(String),
}

impl UsersError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UsersError + '_ {
        move |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One user as listed: the mechanisms it has credentials for, with their iteration counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub mechanisms: Vec<(ScramMechanism, u32)>,
}

type Credentials = BTreeMap<String, BTreeMap<ScramMechanism, StoredCredential>>;

/// The user store. Reads are served from memory; changes are written through.
#[derive(Debug)]
pub struct Users {
    dir: PathBuf,
    config: UsersConfig,
    users: Mutex<Credentials>,
    /// Secret behind unknown users' fake credentials; new on every start.
    fake_secret: [u8; 32],
    /// Holds the lock for as long as the store is open.
    _lock: File,
}

/// users.json as written: names to mechanism names to credentials, base64 for bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    version: u32,
    users: BTreeMap<String, BTreeMap<String, CredentialFile>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

impl Users {
    /// Opens (creating the folder if needed) the store of `data_dir` and locks it.
    pub fn open(data_dir: &Path, config: UsersConfig) -> Result<Users, UsersError> {
        if !(scram::ITERATIONS_MIN..=scram::ITERATIONS_MAX).contains(&config.iterations_default) {
            return Err(UsersError::InvalidCredential(format!(
                "scram_iterations_default {} is outside {}..={}",
                config.iterations_default,
                scram::ITERATIONS_MIN,
                scram::ITERATIONS_MAX
            )));
        }
        let dir = data_dir.join(SECURITY_DIR);
        fs::create_dir_all(&dir).map_err(UsersError::io(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(UsersError::io(&lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(UsersError::Locked { path: lock_path })
            }
            Err(e) => return Err(UsersError::io(&lock_path)(e.into())),
        }
        let path = dir.join(USERS_FILE);
        let users = match fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Credentials::new(),
            Err(e) => return Err(UsersError::io(&path)(e)),
        };
        let mut fake_secret = [0u8; 32];
        scram::random(&mut fake_secret);
        Ok(Users {
            dir,
            config,
            users: Mutex::new(users),
            fake_secret,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &UsersConfig {
        &self.config
    }

    /// Checks a user name: not empty, within `name_bytes_max`, no control characters.
    pub fn check_name(&self, name: &str) -> Result<(), UsersError> {
        let reason = if name.is_empty() {
            "must not be empty".to_string()
        } else if name.len() > self.config.name_bytes_max {
            format!(
                "{} bytes is over the limit of {}",
                name.len(),
                self.config.name_bytes_max
            )
        } else if name.chars().any(char::is_control) {
            "must not hold control characters".to_string()
        } else {
            return Ok(());
        };
        Err(UsersError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        })
    }

    /// Adds or replaces the user's credential for its mechanism.
    pub fn upsert(&self, name: &str, credential: StoredCredential) -> Result<(), UsersError> {
        self.check_name(name)?;
        credential.check().map_err(UsersError::InvalidCredential)?;
        self.change(|users| {
            if !users.contains_key(name) && users.len() >= self.config.users_max {
                return Err(UsersError::LimitReached {
                    max: self.config.users_max,
                });
            }
            users
                .entry(name.to_string())
                .or_default()
                .insert(credential.mechanism, credential);
            Ok(())
        })
    }

    /// Salts `password` (the default iteration count unless given) and stores it. Runs PBKDF2:
    /// call it off the async threads.
    pub fn upsert_password(
        &self,
        name: &str,
        mechanism: ScramMechanism,
        password: &str,
        iterations: Option<u32>,
    ) -> Result<(), UsersError> {
        check_password(password)?;
        let credential = StoredCredential::generate(
            mechanism,
            password.as_bytes(),
            iterations.unwrap_or(self.config.iterations_default),
        )
        .map_err(|e| UsersError::InvalidCredential(e.to_string()))?;
        self.upsert(name, credential)
    }

    /// Deletes the user's credential for `mechanism`, or all of them; the user goes when it
    /// has none left. `NotFound` when there was nothing to delete.
    pub fn delete(&self, name: &str, mechanism: Option<ScramMechanism>) -> Result<(), UsersError> {
        self.change(|users| {
            let Some(credentials) = users.get_mut(name) else {
                return Err(UsersError::NotFound(name.to_string()));
            };
            match mechanism {
                None => credentials.clear(),
                Some(m) => {
                    if credentials.remove(&m).is_none() {
                        return Err(UsersError::NotFound(format!("{name} ({m})")));
                    }
                }
            }
            if credentials.is_empty() {
                users.remove(name);
            }
            Ok(())
        })
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserInfo> {
        let users = self.users.lock().expect("users lock");
        users.iter().map(|(name, c)| info(name, c)).collect()
    }

    pub fn describe(&self, name: &str) -> Option<UserInfo> {
        let users = self.users.lock().expect("users lock");
        users.get(name).map(|c| info(name, c))
    }

    pub fn credential(&self, name: &str, mechanism: ScramMechanism) -> Option<StoredCredential> {
        let users = self.users.lock().expect("users lock");
        users.get(name)?.get(&mechanism).cloned()
    }

    /// The user's credential, or for an unknown user a fake one that no password matches and
    /// that is the same on every call (a real user's salt does not change between tries
    /// either).
    pub fn credential_or_fake(&self, name: &str, mechanism: ScramMechanism) -> StoredCredential {
        self.credential(name, mechanism)
            .unwrap_or_else(|| self.fake_credential(name, mechanism))
    }

    fn fake_credential(&self, name: &str, mechanism: ScramMechanism) -> StoredCredential {
        let derive = |label: &str, n: usize| {
            let mut out = Vec::with_capacity(n);
            let mut block = 0u8;
            while out.len() < n {
                let message = format!("{label}\0{mechanism}\0{name}\0{block}");
                out.extend(ScramMechanism::Sha256.hmac(&self.fake_secret, message.as_bytes()));
                block += 1;
            }
            out.truncate(n);
            out
        };
        let n = mechanism.hash_bytes();
        StoredCredential {
            mechanism,
            salt: derive("salt", scram::SALT_BYTES),
            iterations: self.config.iterations_default,
            stored_key: derive("stored", n),
            server_key: derive("server", n),
        }
    }

    /// Whether `password` is the user's (SASL PLAIN), checked against its SCRAM-SHA-512
    /// credential, else its SCRAM-SHA-256 one. Unknown users cost one PBKDF2 too. Runs PBKDF2:
    /// call it off the async threads.
    pub fn verify_plain(&self, name: &str, password: &str) -> bool {
        let credential = self
            .credential(name, ScramMechanism::Sha512)
            .or_else(|| self.credential(name, ScramMechanism::Sha256))
            .unwrap_or_else(|| self.fake_credential(name, ScramMechanism::Sha512));
        credential.verify_password(password.as_bytes())
    }

    /// Applies `f` to a copy, writes the copy, and only then makes it current.
    fn change(
        &self,
        f: impl FnOnce(&mut Credentials) -> Result<(), UsersError>,
    ) -> Result<(), UsersError> {
        let mut users = self.users.lock().expect("users lock");
        let mut next = users.clone();
        f(&mut next)?;
        self.write(&next)?;
        *users = next;
        Ok(())
    }

    fn write(&self, users: &Credentials) -> Result<(), UsersError> {
        let file = UsersFile {
            version: 1,
            users: users
                .iter()
                .map(|(name, credentials)| {
                    (
                        name.clone(),
                        credentials
                            .iter()
                            .map(|(m, c)| {
                                (
                                    m.name().to_string(),
                                    CredentialFile {
                                        salt: BASE64.encode(&c.salt),
                                        iterations: c.iterations,
                                        stored_key: BASE64.encode(&c.stored_key),
                                        server_key: BASE64.encode(&c.server_key),
                                    },
                                )
                            })
                            .collect(),
                    )
                })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("users serialize");
        json.push(b'\n');
        write_atomically(&self.dir, USERS_FILE, &json)
    }
}

/// Checks a password the broker is given in clear.
pub fn check_password(password: &str) -> Result<(), UsersError> {
    if password.is_empty() {
        return Err(UsersError::InvalidCredential(
            "the password must not be empty".into(),
        ));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(UsersError::InvalidCredential(format!(
            "a password of {} bytes is over the limit of {PASSWORD_BYTES_MAX}",
            password.len()
        )));
    }
    Ok(())
}

fn info(name: &str, credentials: &BTreeMap<ScramMechanism, StoredCredential>) -> UserInfo {
    UserInfo {
        name: name.to_string(),
        mechanisms: credentials
            .iter()
            .map(|(m, c)| (*m, c.iterations))
            .collect(),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Credentials, UsersError> {
    let corrupt = |reason: String| UsersError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: UsersFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != 1 {
        return Err(corrupt(format!("unknown version {}", file.version)));
    }
    let mut users = Credentials::new();
    for (name, credentials) in file.users {
        let mut parsed = BTreeMap::new();
        for (mechanism, c) in credentials {
            let mechanism: ScramMechanism = mechanism.parse().map_err(corrupt)?;
            let bytes = |what: &str, v: &str| {
                BASE64
                    .decode(v)
                    .map_err(|e| corrupt(format!("{name}: {what}: {e}")))
            };
            let credential = StoredCredential {
                mechanism,
                salt: bytes("salt", &c.salt)?,
                iterations: c.iterations,
                stored_key: bytes("stored_key", &c.stored_key)?,
                server_key: bytes("server_key", &c.server_key)?,
            };
            credential
                .check()
                .map_err(|e| corrupt(format!("{name}: {e}")))?;
            parsed.insert(mechanism, credential);
        }
        users.insert(name, parsed);
    }
    Ok(users)
}

/// Replaces `dir/name` with `bytes`, owner-only (the keys allow an offline dictionary attack on
/// the passwords), atomically and durably ([`crate::log::replace_file`]).
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), UsersError> {
    crate::log::replace_file(dir, name, bytes, true).map_err(|e| match e {
        crate::log::LogError::Io { path, source, .. } => UsersError::Io { path, source },
        other => UsersError::Io {
            path: dir.join(name),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Users {
        Users::open(dir, UsersConfig::default()).unwrap()
    }

    #[test]
    fn users_survive_a_reopen_and_the_file_holds_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let users = store(dir.path());
        users
            .upsert_password("alice", ScramMechanism::Sha512, "wonderland", None)
            .unwrap();
        users
            .upsert_password("alice", ScramMechanism::Sha256, "wonderland", Some(8192))
            .unwrap();
        users
            .upsert_password("bob", ScramMechanism::Sha256, "builder", None)
            .unwrap();
        drop(users);
        let path = dir.path().join("security/users.json");
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("wonderland") && text.contains("stored_key"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let users = store(dir.path());
        assert_eq!(
            users.list(),
            vec![
                UserInfo {
                    name: "alice".into(),
                    mechanisms: vec![
                        (ScramMechanism::Sha256, 8192),
                        (ScramMechanism::Sha512, 4096)
                    ]
                },
                UserInfo {
                    name: "bob".into(),
                    mechanisms: vec![(ScramMechanism::Sha256, 4096)]
                },
            ]
        );
        assert!(users.verify_plain("alice", "wonderland"));
        assert!(users.verify_plain("bob", "builder"));
        assert!(!users.verify_plain("bob", "wonderland"));
        assert!(!users.verify_plain("carol", "wonderland"));
        users.delete("alice", Some(ScramMechanism::Sha512)).unwrap();
        assert!(users.verify_plain("alice", "wonderland"), "SHA-256 is left");
        users.delete("alice", None).unwrap();
        assert!(matches!(
            users.delete("alice", None),
            Err(UsersError::NotFound(_))
        ));
        assert_eq!(users.list().len(), 1);
    }

    #[test]
    fn a_second_store_on_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let users = store(dir.path());
        assert!(matches!(
            Users::open(dir.path(), UsersConfig::default()),
            Err(UsersError::Locked { .. })
        ));
        drop(users);
        store(dir.path());
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(
            dir.path(),
            UsersConfig {
                users_max: 1,
                name_bytes_max: 8,
                ..UsersConfig::default()
            },
        )
        .unwrap();
        let m = ScramMechanism::Sha256;
        users.upsert_password("a", m, "pw", None).unwrap();
        assert!(matches!(
            users.upsert_password("b", m, "pw", None),
            Err(UsersError::LimitReached { max: 1 })
        ));
        // Replacing an existing user's credential is not a new user.
        users.upsert_password("a", m, "pw2", None).unwrap();
        for name in ["", "123456789", "a\nb"] {
            assert!(matches!(
                users.upsert_password(name, m, "pw", None),
                Err(UsersError::InvalidName { .. })
            ));
        }
        assert!(users.upsert_password("a", m, "", None).is_err());
        assert!(users.upsert_password("a", m, "pw", Some(100)).is_err());
        let mut short = StoredCredential::derive(m, b"pw", b"salt", 4096);
        short.stored_key.pop();
        assert!(matches!(
            users.upsert("a", short),
            Err(UsersError::InvalidCredential(_))
        ));
        assert!(users.verify_plain("a", "pw2"));
        assert_eq!(users.list().len(), 1);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let users = store(dir.path());
        let m = ScramMechanism::Sha256;
        users.upsert_password("a", m, "pw", None).unwrap();
        // A folder where the temporary file goes makes the write fail.
        fs::create_dir(dir.path().join("security/users.json.tmp")).unwrap();
        assert!(matches!(
            users.upsert_password("b", m, "pw", None),
            Err(UsersError::Io { .. })
        ));
        assert_eq!(users.list().len(), 1);
        drop(users);
        fs::remove_dir(dir.path().join("security/users.json.tmp")).unwrap();
        assert_eq!(store(dir.path()).list().len(), 1);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("security")).unwrap();
        fs::write(dir.path().join("security/users.json"), b"{\"version\":1,").unwrap();
        let e = Users::open(dir.path(), UsersConfig::default()).unwrap_err();
        assert!(e.to_string().contains("users.json"), "{e}");
    }

    #[test]
    fn unknown_users_get_a_stable_fake_salt() {
        let dir = tempfile::tempdir().unwrap();
        let users = store(dir.path());
        let m = ScramMechanism::Sha512;
        let a = users.credential_or_fake("nobody", m);
        let b = users.credential_or_fake("nobody", m);
        let c = users.credential_or_fake("somebody", m);
        assert_eq!(a, b);
        assert_ne!(a.salt, c.salt);
        assert!(a.check().is_ok());
        assert!(users.credential("nobody", m).is_none());
    }
}
