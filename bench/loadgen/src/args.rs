//! A tiny `--flag value` / `--flag=value` parser; everything after `--` is kept
//! verbatim in `rest`.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::BoxError;

pub struct Args {
    flags: BTreeMap<String, String>,
    pub rest: Vec<String>,
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Self, BoxError> {
        let mut flags = BTreeMap::new();
        let mut rest = Vec::new();
        let mut iter = argv.iter();
        while let Some(arg) = iter.next() {
            if arg == "--" {
                rest.extend(iter.by_ref().cloned());
                break;
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?} (see --help)").into());
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = iter
                        .next()
                        .ok_or_else(|| format!("--{flag} needs a value"))?;
                    (flag.to_owned(), value.clone())
                }
            };
            if flags.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice").into());
            }
        }
        Ok(Self { flags, rest })
    }

    pub fn required<T: FromStr>(&mut self, name: &str) -> Result<T, BoxError>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self
            .flags
            .remove(name)
            .ok_or_else(|| format!("--{name} is required (see --help)"))?;
        raw.parse()
            .map_err(|e| format!("--{name} {raw:?}: {e}").into())
    }

    pub fn get_or<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, BoxError>
    where
        T::Err: std::fmt::Display,
    {
        match self.flags.remove(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| format!("--{name} {raw:?}: {e}").into()),
        }
    }

    /// Fails on any flag that was given but not consumed.
    pub fn finish(&self) -> Result<(), BoxError> {
        match self.flags.keys().next() {
            None => Ok(()),
            Some(name) => Err(format!("unknown flag --{name} (see --help)").into()),
        }
    }
}
