//! Dataset folders in the Medical Segmentation Decathlon / nnU-Net v2 "raw" layout, as is.
//!
//! ```text
//! Dataset/
//! ├── dataset.json
//! ├── imagesTr/CASE_0000.nii.gz   one file per channel: _0000, _0001, …
//! ├── labelsTr/CASE.nii.gz        integer label map, or one per rater:
//! ├── labelsTr/CASE_rater1.nii.gz  … CASE_raterR.nii.gz (multi-rater cases, see below)
//! ├── softlabelsTr/CASE.nii.gz    optional (calseg): soft labels, 4D (x, y, z, K), float32
//! ├── imagesTs/…                  optional test images
//! └── labelsTs/…                  optional test labels
//! ```
//!
//! `dataset.json` in the nnU-Net v2 form — `channel_names` (`{"0": "T1"}`), `labels`
//! (name → value, or name → list of values for nnU-Net's region labels), `numTraining`,
//! `file_ending` — or in the MSD v1 form — `modality` and `labels` value-string → name,
//! plus `training`/`test` file lists, where a multi-channel case is one 4D file with the
//! channels on the last axis.
//!
//! Opening a dataset reads `dataset.json` and lists the folders; cases are loaded one at
//! a time by [`Dataset::load_case`], which checks that every channel exists, that
//! images and label agree in shape and affine, and that every label value is declared —
//! each failure an [`IoError::Case`] naming the case and the file. [`Dataset::check`]
//! runs those checks over every case.
//!
//! ## Multi-rater cases
//! Data sets on which calibration is judged against real uncertainty (QUBIQ, LIDC-IDRI,
//! RIGA) have several raters per image. Such a case has one label map per rater,
//! `labelsTr/CASE_rater{N}` + `file_ending` (e.g. `CASE_rater1.nii.gz`, also `.nii`,
//! `.npy`, `.png` like the other label files; the same in `labelsTs/`), found
//! automatically when `labelsTr/CASE` + `file_ending` is absent. The rules:
//! * `N` runs `1..=R` without gaps and is written without leading zeros (`rater1`,
//!   `rater12`; a file `CASE_rater01` is not a rater file). A gap (`rater1`, `rater3`)
//!   is an [`IoError::Case`] naming the first missing file.
//! * Every rater map is checked like a label map: same shape and affine as the image,
//!   every value declared in `dataset.json` (the error names the rater's file).
//! * A case with both `CASE` and `CASE_rater1` label files is ambiguous and an error
//!   naming both (there is no silent precedence).
//! * [`Case::raters`] holds the `R` maps in rater order; [`Case::label`] is their
//!   **per-voxel majority vote**, ties going to the **lowest label value** — the argmax,
//!   ties → lower class, of the rater mean, so all code that needs one hard label keeps
//!   working. The mean of the raters' one-hot maps is the soft label of the rater
//!   distribution (`calseg_metrics::raters::rater_distribution`, and the training target
//!   `TargetSource::Raters` of calseg-seg).
//!
//! [`crate::phantom::write_rater_dataset`] writes a seeded multi-rater folder.

use crate::error::{IoError, Result};
use crate::image::{
    Affine, Format, Geometry, Image, image_to_labels, images_from_bytes, probs_from_bytes,
};
use ndarray::{ArrayD, Axis, IxDyn};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Training or test part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// `imagesTr` / `labelsTr`.
    Train,
    /// `imagesTs` / `labelsTs`.
    Test,
}

/// One entry of `labels` in `dataset.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelDef {
    /// Class name, e.g. `"GM"`.
    pub name: String,
    /// The label value(s): one for ordinary classes, several for nnU-Net region labels.
    pub values: Vec<u32>,
}

/// The normalised content of `dataset.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    /// `name`, if given.
    pub name: Option<String>,
    /// Channel names in channel order (`channel_names` or MSD `modality`).
    pub channel_names: Vec<String>,
    /// Label definitions, sorted by their first value.
    pub labels: Vec<LabelDef>,
    /// `numTraining`.
    pub num_training: usize,
    /// `file_ending` (MSD v1 default: `.nii.gz`).
    pub file_ending: String,
    /// True if the file used the MSD v1 form.
    pub msd_v1: bool,
}

impl DatasetInfo {
    /// Every label value declared (the union over [`LabelDef::values`]).
    pub fn declared_values(&self) -> BTreeSet<u32> {
        self.labels
            .iter()
            .flat_map(|l| l.values.iter().copied())
            .collect()
    }

    /// Number of classes: the number of label entries.
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }
}

#[derive(Deserialize)]
struct RawJson {
    name: Option<String>,
    channel_names: Option<BTreeMap<String, String>>,
    modality: Option<BTreeMap<String, String>>,
    labels: Option<serde_json::Map<String, Value>>,
    #[serde(rename = "numTraining")]
    num_training: Option<u64>,
    file_ending: Option<String>,
    training: Option<Vec<RawPair>>,
    test: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RawPair {
    image: String,
    label: Option<String>,
}

/// `dataset.json` parsed: the info, the MSD v1 `training` pairs and `test` files if listed.
type ParsedJson = (DatasetInfo, Option<Vec<RawPair>>, Option<Vec<String>>);

fn parse_dataset_json(bytes: &[u8], path: &Path) -> Result<ParsedJson> {
    let err = |reason: String| IoError::DatasetJson {
        path: path.to_path_buf(),
        reason,
    };
    let raw: RawJson = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    let channels = raw
        .channel_names
        .or(raw.modality)
        .ok_or_else(|| err("neither \"channel_names\" nor \"modality\" is given".into()))?;
    let mut channel_names = Vec::with_capacity(channels.len());
    for c in 0..channels.len() {
        let name = channels.get(&c.to_string()).ok_or_else(|| {
            err(format!(
                "channel keys must be \"0\"…\"{}\", found {:?}",
                channels.len() - 1,
                channels.keys().collect::<Vec<_>>()
            ))
        })?;
        channel_names.push(name.clone());
    }
    if channel_names.is_empty() {
        return Err(err("no channel is declared".into()));
    }
    let labels_raw = raw
        .labels
        .ok_or_else(|| err("\"labels\" is missing".into()))?;
    if labels_raw.is_empty() {
        return Err(err("\"labels\" is empty".into()));
    }
    let as_value = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    // MSD v1: {"0": "background", "1": "edema"}; nnU-Net v2: {"background": 0, "tumor": [1, 2]}.
    let msd_v1 = labels_raw.values().all(Value::is_string);
    let mut labels = Vec::with_capacity(labels_raw.len());
    for (k, v) in &labels_raw {
        if msd_v1 {
            let value: u32 = k.parse().map_err(|_| {
                err(format!(
                    "MSD-style label key {k:?} is not a non-negative integer"
                ))
            })?;
            labels.push(LabelDef {
                name: v.as_str().unwrap_or_default().to_string(),
                values: vec![value],
            });
        } else {
            let values = match v {
                Value::Array(items) => items.iter().map(as_value).collect::<Option<Vec<_>>>(),
                other => as_value(other).map(|x| vec![x]),
            }
            .filter(|vs| !vs.is_empty())
            .ok_or_else(|| {
                err(format!(
                    "label {k:?} has value {v}, expected a non-negative integer or a list of them"
                ))
            })?;
            labels.push(LabelDef {
                name: k.clone(),
                values,
            });
        }
    }
    labels.sort_by_key(|l| l.values.first().copied().unwrap_or(0));
    let num_training = raw
        .num_training
        .ok_or_else(|| err("\"numTraining\" is missing".into()))? as usize;
    let file_ending = raw.file_ending.unwrap_or_else(|| ".nii.gz".to_string());
    if Format::from_path(Path::new(&format!("x{file_ending}"))).is_err() {
        return Err(err(format!(
            "file_ending {file_ending:?} is not supported (use .nii.gz, .nii, .npy or .png)"
        )));
    }
    let test = match raw.test {
        None => None,
        Some(items) => Some(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    Value::Object(o) => o
                        .get("image")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| err("a \"test\" entry has no \"image\"".into())),
                    other => Err(err(format!("unexpected \"test\" entry {other}"))),
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    Ok((
        DatasetInfo {
            name: raw.name,
            channel_names,
            labels,
            num_training,
            file_ending,
            msd_v1,
        },
        raw.training,
        test,
    ))
}

/// Where the files of a dataset live.
#[derive(Debug, Clone)]
enum Store {
    Dir(PathBuf),
    Embedded {
        name: &'static str,
        files: &'static [(&'static str, &'static [u8])],
    },
}

impl Store {
    fn display(&self, rel: &str) -> PathBuf {
        match self {
            Store::Dir(root) => root.join(rel),
            Store::Embedded { name, .. } => PathBuf::from(format!("<embedded>/{name}/{rel}")),
        }
    }

    fn exists(&self, rel: &str) -> bool {
        match self {
            Store::Dir(root) => root.join(rel).is_file(),
            Store::Embedded { files, .. } => files.iter().any(|(n, _)| *n == rel),
        }
    }

    fn read(&self, rel: &str) -> Result<Cow<'static, [u8]>> {
        match self {
            Store::Dir(root) => {
                let p = root.join(rel);
                std::fs::read(&p)
                    .map(Cow::Owned)
                    .map_err(|e| IoError::io(&p, "read", e))
            }
            Store::Embedded { files, .. } => files
                .iter()
                .find(|(n, _)| *n == rel)
                .map(|(_, b)| Cow::Borrowed(*b))
                .ok_or_else(|| {
                    IoError::io(
                        &self.display(rel),
                        "read",
                        std::io::Error::from(std::io::ErrorKind::NotFound),
                    )
                }),
        }
    }

    /// File names directly inside folder `sub` (not hidden), sorted; `None` if the
    /// folder does not exist.
    fn list(&self, sub: &str) -> Result<Option<Vec<String>>> {
        let mut names = match self {
            Store::Dir(root) => {
                let dir = root.join(sub);
                if !dir.is_dir() {
                    return Ok(None);
                }
                let rd = std::fs::read_dir(&dir).map_err(|e| IoError::io(&dir, "list", e))?;
                let mut names = Vec::new();
                for entry in rd {
                    let entry = entry.map_err(|e| IoError::io(&dir, "list", e))?;
                    if entry.path().is_file() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                names
            }
            Store::Embedded { files, .. } => {
                let prefix = format!("{sub}/");
                let names: Vec<String> = files
                    .iter()
                    .filter_map(|(n, _)| n.strip_prefix(&prefix))
                    .filter(|n| !n.contains('/'))
                    .map(str::to_string)
                    .collect();
                if names.is_empty() {
                    return Ok(None);
                }
                names
            }
        };
        names.retain(|n| !n.starts_with('.'));
        names.sort();
        Ok(Some(names))
    }
}

/// A case of a dataset, listed but not loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRef {
    /// Case identifier, e.g. `"icbm152"`.
    pub id: String,
    /// Training or test.
    pub split: Split,
    /// Image files relative to the dataset root, one per channel (or one 4D file, MSD v1).
    images: Vec<String>,
    channels_last: bool,
    label: Option<String>,
    soft_label: Option<String>,
    /// Rater label files `(N, path)`, sorted by `N` (empty: not a multi-rater case).
    raters: Vec<(u32, String)>,
}

impl CaseRef {
    /// Number of rater label files found for the case (`CASE_rater{N}`; 0 for an
    /// ordinary case). Known from the folder listing, before loading.
    pub fn rater_count(&self) -> usize {
        self.raters.len()
    }
}

/// A loaded case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Case identifier.
    pub id: String,
    /// Channels stacked channel-first: `(C, *spatial)`, values after scaling.
    pub image: ArrayD<f32>,
    /// The label map `(*spatial)`, if the case has one.
    pub label: Option<ArrayD<u32>>,
    /// Soft labels `(K, *spatial)` from `softlabelsTr/`, if present.
    pub soft_label: Option<ArrayD<f32>>,
    /// The label maps `(*spatial)` of the raters, in rater order (`CASE_rater1`, …), for
    /// a multi-rater case (see the module docs); `label` is then their majority vote.
    pub raters: Option<Vec<ArrayD<u32>>>,
    /// Geometry of the spatial axes (from the first channel's file).
    pub geometry: Geometry,
}

/// A dataset folder (or the embedded template): `dataset.json` plus the listed cases.
#[derive(Debug, Clone)]
pub struct Dataset {
    store: Store,
    info: DatasetInfo,
    training: Vec<CaseRef>,
    test: Vec<CaseRef>,
}

impl Dataset {
    /// Opens a dataset folder: parses `dataset.json` and lists `imagesTr` (and
    /// `imagesTs` if present). Nothing is loaded yet.
    ///
    /// ```no_run
    /// let ds = calseg_io::Dataset::open("nnUNet_raw/Dataset004_Hippocampus")?;
    /// for case in ds.training_cases() {
    ///     let c = ds.load_case(case)?;
    ///     println!("{}: {:?}", c.id, c.image.shape());
    /// }
    /// # Ok::<(), calseg_io::IoError>(())
    /// ```
    pub fn open(root: impl AsRef<Path>) -> Result<Dataset> {
        Self::from_store(Store::Dir(root.as_ref().to_path_buf()))
    }

    /// A dataset whose files are held in memory for the life of the program, e.g.
    /// compiled in with `include_bytes!` (this is how [`crate::icbm152`] works): `files`
    /// maps paths relative to the dataset root (`"dataset.json"`,
    /// `"imagesTr/X_0000.nii.gz"`, …) to their bytes. `name` appears in error messages as
    /// `<embedded>/NAME/…`.
    pub fn from_static(
        name: &'static str,
        files: &'static [(&'static str, &'static [u8])],
    ) -> Result<Dataset> {
        Self::from_store(Store::Embedded { name, files })
    }

    fn from_store(store: Store) -> Result<Dataset> {
        let json_path = store.display("dataset.json");
        let bytes = store.read("dataset.json").map_err(|e| match e {
            IoError::Io { source, .. } => IoError::DatasetJson {
                path: json_path.clone(),
                reason: format!("cannot read it: {source}"),
            },
            other => other,
        })?;
        let (info, training_list, test_list) = parse_dataset_json(&bytes, &json_path)?;
        let mut ds = Dataset {
            store,
            info,
            training: Vec::new(),
            test: Vec::new(),
        };
        ds.training = match training_list {
            Some(pairs) => ds.cases_from_list(
                Split::Train,
                pairs.into_iter().map(|p| (p.image, p.label)).collect(),
            )?,
            None => ds
                .cases_from_folder(Split::Train)?
                .ok_or_else(|| IoError::Case {
                    case: String::new(),
                    path: ds.store.display("imagesTr"),
                    reason: "the imagesTr folder is missing".into(),
                })?,
        };
        ds.test = match test_list {
            Some(list) => {
                ds.cases_from_list(Split::Test, list.into_iter().map(|i| (i, None)).collect())?
            }
            None => ds.cases_from_folder(Split::Test)?.unwrap_or_default(),
        };
        Ok(ds)
    }

    fn folders(split: Split) -> (&'static str, &'static str, &'static str) {
        match split {
            Split::Train => ("imagesTr", "labelsTr", "softlabelsTr"),
            Split::Test => ("imagesTs", "labelsTs", "softlabelsTs"),
        }
    }

    /// Cases from an MSD v1 `training`/`test` list ("./imagesTr/X.nii.gz").
    fn cases_from_list(
        &self,
        split: Split,
        items: Vec<(String, Option<String>)>,
    ) -> Result<Vec<CaseRef>> {
        let (_, labels_dir, soft_dir) = Self::folders(split);
        let clean = |p: &str| p.trim_start_matches("./").to_string();
        let ending = &self.info.file_ending;
        let rater_names = self.store.list(labels_dir)?.unwrap_or_default();
        let rater_names = &rater_names;
        Ok(items
            .into_iter()
            .map(|(image, label)| {
                let image = clean(&image);
                let file = image.rsplit('/').next().unwrap_or(&image).to_string();
                let id = file
                    .strip_suffix(ending.as_str())
                    .unwrap_or(&file)
                    .to_string();
                let raters = rater_files(rater_names, labels_dir, &id, ending);
                let label = label.map(|l| clean(&l)).or_else(|| {
                    let l = format!("{labels_dir}/{id}{ending}");
                    self.store.exists(&l).then_some(l)
                });
                // A listed label that does not exist stands for the raters' vote.
                let label = label.filter(|l| raters.is_empty() || self.store.exists(l));
                let soft = format!("{soft_dir}/{id}{ending}");
                CaseRef {
                    raters,
                    soft_label: self.store.exists(&soft).then_some(soft),
                    id,
                    split,
                    images: vec![image],
                    channels_last: true,
                    label,
                }
            })
            .collect())
    }

    /// Cases from a folder listing (nnU-Net v2 `CASE_0000` naming, or MSD v1 `CASE`).
    fn cases_from_folder(&self, split: Split) -> Result<Option<Vec<CaseRef>>> {
        let (images_dir, labels_dir, soft_dir) = Self::folders(split);
        let Some(names) = self.store.list(images_dir)? else {
            return Ok(None);
        };
        let ending = self.info.file_ending.as_str();
        let nchan = self.info.channel_names.len();
        let label_names = self.store.list(labels_dir)?;
        let has_labels = label_names.is_some();
        let label_names = label_names.unwrap_or_default();
        let mut ids: BTreeMap<String, bool> = BTreeMap::new(); // id → channels_last (whole-case file)
        for name in &names {
            let Some(stem) = name.strip_suffix(ending) else {
                continue;
            };
            match split_channel(stem) {
                Some((id, _)) => {
                    ids.entry(id.to_string()).or_insert(false);
                }
                None => {
                    ids.insert(stem.to_string(), true);
                }
            }
        }
        Ok(Some(
            ids.into_iter()
                .map(|(id, whole)| {
                    let images = if whole {
                        vec![format!("{images_dir}/{id}{ending}")]
                    } else {
                        (0..nchan)
                            .map(|c| format!("{images_dir}/{id}_{c:04}{ending}"))
                            .collect()
                    };
                    let label = format!("{labels_dir}/{id}{ending}");
                    let soft = format!("{soft_dir}/{id}{ending}");
                    let raters = rater_files(&label_names, labels_dir, &id, ending);
                    // Without CASE's own label file the raters' vote is the label.
                    let label = (split == Split::Train || has_labels)
                        .then_some(label)
                        .filter(|l| raters.is_empty() || self.store.exists(l));
                    CaseRef {
                        raters,
                        label,
                        soft_label: self.store.exists(&soft).then_some(soft),
                        id,
                        split,
                        images,
                        channels_last: whole,
                    }
                })
                .collect(),
        ))
    }

    /// The parsed `dataset.json`.
    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// Training cases, sorted by id.
    pub fn training_cases(&self) -> &[CaseRef] {
        &self.training
    }

    /// Test cases (from `imagesTs` or the MSD `test` list), sorted by id.
    pub fn test_cases(&self) -> &[CaseRef] {
        &self.test
    }

    /// Finds a case by id (training first, then test).
    pub fn case(&self, id: &str) -> Option<&CaseRef> {
        self.training.iter().chain(&self.test).find(|c| c.id == id)
    }

    /// Loads training or test case `id`.
    pub fn load(&self, id: &str) -> Result<Case> {
        let case = self.case(id).ok_or_else(|| IoError::Case {
            case: id.to_string(),
            path: self.store.display("imagesTr"),
            reason: "no such case in the dataset".into(),
        })?;
        self.load_case(case)
    }

    /// Loads a case: channels stacked `(C, *spatial)` as f32, label, soft labels, geometry,
    /// with the consistency checks described in the module docs.
    pub fn load_case(&self, case: &CaseRef) -> Result<Case> {
        let case_err = |path: PathBuf, reason: String| IoError::Case {
            case: case.id.clone(),
            path,
            reason,
        };
        let format = Format::from_path(Path::new(&format!("x{}", self.info.file_ending)))?;
        let nchan = self.info.channel_names.len();

        // Images.
        let mut channels: Vec<ArrayD<f32>> = Vec::with_capacity(nchan);
        let mut geometry: Option<Geometry> = None;
        for (c, rel) in case.images.iter().enumerate() {
            let path = self.store.display(rel);
            if !self.store.exists(rel) {
                let what = if case.channels_last {
                    "image".to_string()
                } else {
                    format!(
                        "channel {c} ({})",
                        self.info.channel_names.get(c).map_or("?", String::as_str)
                    )
                };
                return Err(case_err(path, format!("{what} is missing")));
            }
            let image = self.read_one(rel, format)?;
            let values = image.to_f32();
            let geo = image.geometry;
            if case.channels_last {
                // One file: 3D for one channel, (*spatial, C) for several.
                let shape = values.shape().to_vec();
                let spatial_nd = if nchan == 1 && shape.len() <= 3 {
                    shape.len()
                } else {
                    shape.len().saturating_sub(1)
                };
                if nchan > 1 && shape.last() != Some(&nchan) {
                    return Err(case_err(
                        path,
                        format!(
                            "expected {nchan} channels on the last axis, the image has shape {shape:?}"
                        ),
                    ));
                }
                if spatial_nd == shape.len() {
                    channels.push(values);
                } else {
                    for ch in values.axis_iter(Axis(spatial_nd)) {
                        channels.push(ch.to_owned());
                    }
                }
                let mut geo = geo;
                geo.spacing.truncate(spatial_nd.min(3));
                geometry = Some(geo);
            } else {
                if let Some(first) = channels.first()
                    && first.shape() != values.shape()
                {
                    return Err(case_err(
                        path,
                        format!(
                            "channel {c} has shape {:?}, channel 0 has {:?}",
                            values.shape(),
                            first.shape()
                        ),
                    ));
                }
                if let Some(g) = &geometry {
                    if !affines_agree(&g.affine, &geo.affine) {
                        return Err(case_err(
                            path,
                            format!(
                                "channel {c} has affine {:?}, channel 0 has {:?}",
                                geo.affine, g.affine
                            ),
                        ));
                    }
                } else {
                    geometry = Some(geo);
                }
                channels.push(values);
            }
        }
        let first_file = self
            .store
            .display(case.images.first().map_or("", String::as_str));
        let geometry = geometry
            .ok_or_else(|| case_err(first_file.clone(), "the case has no image file".into()))?;
        let spatial: Vec<usize> = channels
            .first()
            .map(|a| a.shape().to_vec())
            .unwrap_or_default();
        let views: Vec<_> = channels.iter().map(|a| a.view()).collect();
        let image = ndarray::stack(Axis(0), &views)
            .map_err(|e| case_err(first_file.clone(), format!("cannot stack channels: {e}")))?;

        // Label, or the raters and their vote.
        let label = match &case.label {
            None => None,
            Some(rel) => {
                Some(self.load_label_map(case, rel, "label", format, &spatial, &geometry)?)
            }
        };
        let raters = if case.raters.is_empty() {
            None
        } else {
            if let Some(rel) = &case.label {
                return Err(case_err(
                    self.store.display(rel),
                    format!(
                        "both a label file and rater files ({}) exist: keep one or the other",
                        case.raters[0].1
                    ),
                ));
            }
            let mut maps = Vec::with_capacity(case.raters.len());
            for (i, (n, rel)) in case.raters.iter().enumerate() {
                let want = i as u32 + 1;
                if *n != want {
                    let (_, labels_dir, _) = Self::folders(case.split);
                    let missing = format!(
                        "{labels_dir}/{}_rater{want}{}",
                        case.id, self.info.file_ending
                    );
                    let found: Vec<u32> = case.raters.iter().map(|(n, _)| *n).collect();
                    return Err(case_err(
                        self.store.display(&missing),
                        format!(
                            "rater {want} is missing: rater files must be numbered 1..R without gaps (found {found:?})"
                        ),
                    ));
                }
                maps.push(self.load_label_map(
                    case,
                    rel,
                    &format!("rater {n} label"),
                    format,
                    &spatial,
                    &geometry,
                )?);
            }
            Some(maps)
        };
        let label = match (&raters, label) {
            (Some(maps), None) => Some(majority_vote(maps)?),
            (_, label) => label,
        };

        // Soft labels.
        let soft_label = match &case.soft_label {
            None => None,
            Some(rel) => {
                let path = self.store.display(rel);
                let bytes = self.store.read(rel)?;
                let pm = probs_from_bytes(&bytes, &path, format)?;
                let soft = pm.probs.into_f32();
                let k = self.info.num_classes();
                if soft.shape().first() != Some(&k) || soft.shape()[1..] != spatial[..] {
                    return Err(case_err(
                        path,
                        format!(
                            "soft labels have shape {:?} (classes first), expected [{k}] + {spatial:?}",
                            soft.shape()
                        ),
                    ));
                }
                Some(soft)
            }
        };

        Ok(Case {
            id: case.id.clone(),
            image: image
                .into_dimensionality::<IxDyn>()
                .map_err(|e| case_err(first_file, e.to_string()))?,
            label,
            soft_label,
            raters,
            geometry,
        })
    }

    /// Reads one label map (`what`: "label", "rater 2 label") and checks it against the
    /// image: shape, affine, declared values.
    fn load_label_map(
        &self,
        case: &CaseRef,
        rel: &str,
        what: &str,
        format: Format,
        spatial: &[usize],
        geometry: &Geometry,
    ) -> Result<ArrayD<u32>> {
        let case_err = |path: PathBuf, reason: String| IoError::Case {
            case: case.id.clone(),
            path,
            reason,
        };
        let path = self.store.display(rel);
        if !self.store.exists(rel) {
            return Err(case_err(path, format!("the {what} file is missing")));
        }
        let image = self.read_one(rel, format)?;
        let lgeo = image.geometry.clone();
        let lm = image_to_labels(image, &path)?;
        if lm.labels.shape() != spatial {
            return Err(case_err(
                path,
                format!(
                    "{what} shape {:?} differs from image shape {spatial:?}",
                    lm.labels.shape()
                ),
            ));
        }
        if !affines_agree(&geometry.affine, &lgeo.affine) {
            return Err(case_err(
                path,
                format!(
                    "{what} affine {:?} differs from image affine {:?}",
                    lgeo.affine, geometry.affine
                ),
            ));
        }
        let declared = self.info.declared_values();
        let mut seen = BTreeSet::new();
        for &v in lm.labels.iter() {
            seen.insert(v);
        }
        if let Some(v) = seen.iter().find(|v| !declared.contains(v)) {
            return Err(case_err(
                path,
                format!(
                    "{what} value {v} is not declared in dataset.json (declared: {declared:?})"
                ),
            ));
        }
        Ok(lm.labels)
    }

    fn read_one(&self, rel: &str, format: Format) -> Result<Image> {
        let path = self.store.display(rel);
        let bytes = self.store.read(rel)?;
        let mut images = images_from_bytes(&bytes, &path, format)?;
        if images.len() != 1 {
            return Err(IoError::unexpected(&path, "expected exactly one array"));
        }
        images
            .pop()
            .ok_or_else(|| IoError::unexpected(&path, "expected exactly one array"))
    }

    /// Loads every case and checks the whole dataset: `numTraining` matches the number
    /// of training cases, every label file belongs to a case, and every case passes the
    /// checks of [`Dataset::load_case`]. Returns the first problem found.
    pub fn check(&self) -> Result<()> {
        let json = self.store.display("dataset.json");
        if self.training.len() != self.info.num_training {
            return Err(IoError::DatasetJson {
                path: json,
                reason: format!(
                    "numTraining is {} but {} training cases were found",
                    self.info.num_training,
                    self.training.len()
                ),
            });
        }
        for split in [Split::Train, Split::Test] {
            let (_, labels_dir, _) = Self::folders(split);
            let cases = if split == Split::Train {
                &self.training
            } else {
                &self.test
            };
            if let Some(names) = self.store.list(labels_dir)? {
                for n in names {
                    let Some(stem) = n.strip_suffix(self.info.file_ending.as_str()) else {
                        continue;
                    };
                    let id = split_rater(stem).map_or(stem, |(id, _)| id);
                    if !cases.iter().any(|c| c.id == id) {
                        return Err(IoError::Case {
                            case: id.to_string(),
                            path: self.store.display(&format!("{labels_dir}/{n}")),
                            reason: "a label file without images".into(),
                        });
                    }
                }
            }
        }
        for case in self.training.iter().chain(&self.test) {
            self.load_case(case)?;
        }
        Ok(())
    }
}

/// Splits `"CASE_0001"` into `("CASE", 1)`.
fn split_channel(stem: &str) -> Option<(&str, usize)> {
    let (id, ch) = stem.rsplit_once('_')?;
    if ch.len() == 4 && ch.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty() {
        Some((id, ch.parse().ok()?))
    } else {
        None
    }
}

/// Splits `"CASE_rater12"` into `("CASE", 12)`; `N` is decimal without leading zeros.
fn split_rater(stem: &str) -> Option<(&str, u32)> {
    let (id, n) = stem.rsplit_once("_rater")?;
    let canonical = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0');
    if canonical && !id.is_empty() {
        Some((id, n.parse().ok()?))
    } else {
        None
    }
}

/// The rater files `(N, "labels_dir/ID_raterN" + ending)` of case `id` among the file
/// names of the labels folder, sorted by `N`.
fn rater_files(names: &[String], labels_dir: &str, id: &str, ending: &str) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = names
        .iter()
        .filter_map(|name| {
            let stem = name.strip_suffix(ending)?;
            let (case, n) = split_rater(stem)?;
            (case == id).then(|| (n, format!("{labels_dir}/{name}")))
        })
        .collect();
    out.sort();
    out
}

/// The per-voxel majority vote of the rater maps `(*spatial)`: the value most raters
/// gave, ties → the lowest value (the argmax of the raters' mean one-hot map with ties →
/// lower class).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let r = |v: Vec<u32>| ArrayD::from_shape_vec(IxDyn(&[4]), v).unwrap();
/// let vote = calseg_io::dataset::majority_vote(&[r(vec![0, 1, 2, 1]), r(vec![1, 1, 2, 2]), r(vec![0, 0, 1, 3])])?;
/// // voxel 3: one vote each for 1, 2, 3 → the lowest, 1.
/// assert_eq!(vote.into_raw_vec_and_offset().0, vec![0, 1, 2, 1]);
/// # Ok::<(), calseg_io::IoError>(())
/// ```
///
/// # Errors
/// [`IoError::InvalidInput`] for no map, or maps of different shapes.
pub fn majority_vote(raters: &[ArrayD<u32>]) -> Result<ArrayD<u32>> {
    let bad = |reason: String| IoError::invalid(Path::new("rater label maps"), reason);
    let first = raters
        .first()
        .ok_or_else(|| bad("no rater map to vote over".into()))?;
    if let Some(r) = raters.iter().find(|r| r.shape() != first.shape()) {
        return Err(bad(format!(
            "rater maps of shapes {:?} and {:?}",
            first.shape(),
            r.shape()
        )));
    }
    let mut iters: Vec<_> = raters.iter().map(|r| r.iter()).collect();
    let mut votes: Vec<u32> = Vec::with_capacity(raters.len());
    let mut out = Vec::with_capacity(first.len());
    for _ in 0..first.len() {
        votes.clear();
        votes.extend(iters.iter_mut().filter_map(Iterator::next).copied());
        votes.sort_unstable();
        let (mut best, mut best_n, mut i) = (0, 0usize, 0);
        while i < votes.len() {
            let j = votes[i..].iter().take_while(|&&v| v == votes[i]).count();
            // Strictly more votes wins; values ascend, so ties keep the lowest.
            if j > best_n {
                best = votes[i];
                best_n = j;
            }
            i += j;
        }
        out.push(best);
    }
    ArrayD::from_shape_vec(first.raw_dim(), out).map_err(|e| bad(e.to_string()))
}

/// Affines agree within 1e-3 relative (or both absent).
fn affines_agree(a: &Option<Affine>, b: &Option<Affine>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= 1e-3 * (1.0 + x.abs().max(y.abs()))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_suffixes() {
        assert_eq!(split_channel("BRATS_001_0003"), Some(("BRATS_001", 3)));
        assert_eq!(split_channel("case_12"), None);
        assert_eq!(split_channel("_0000"), None);
        assert_eq!(split_channel("nounderscore"), None);
    }

    #[test]
    fn v2_and_v1_json() {
        let v2 = br#"{"channel_names": {"0": "T1", "1": "T2"},
            "labels": {"background": 0, "whole": [1, 2], "core": 2},
            "numTraining": 3, "file_ending": ".nii.gz"}"#;
        let (info, tr, ts) = parse_dataset_json(v2, Path::new("d/dataset.json")).unwrap();
        assert_eq!(info.channel_names, vec!["T1", "T2"]);
        assert_eq!(info.declared_values(), BTreeSet::from([0, 1, 2]));
        assert_eq!(info.labels[1].values, vec![1, 2]);
        assert!(!info.msd_v1 && tr.is_none() && ts.is_none());

        let v1 = br#"{"name": "Hippocampus", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": 1, "numTest": 1,
            "training": [{"image": "./imagesTr/h_1.nii.gz", "label": "./labelsTr/h_1.nii.gz"}],
            "test": ["./imagesTs/h_2.nii.gz"]}"#;
        let (info, tr, ts) = parse_dataset_json(v1, Path::new("d/dataset.json")).unwrap();
        assert!(info.msd_v1);
        assert_eq!(info.labels[2].name, "Posterior");
        assert_eq!(info.file_ending, ".nii.gz");
        assert_eq!(tr.unwrap().len(), 1);
        assert_eq!(ts.unwrap(), vec!["./imagesTs/h_2.nii.gz".to_string()]);
    }

    #[test]
    fn bad_json_is_named() {
        for (text, needle) in [
            (&b"{not json"[..], "dataset.json"),
            (br#"{"labels": {"a": 0}, "numTraining": 1}"#, "channel_names"),
            (br#"{"channel_names": {"0": "T1"}, "numTraining": 1}"#, "labels"),
            (br#"{"channel_names": {"1": "T1"}, "labels": {"a": 0}, "numTraining": 1}"#, "channel keys"),
            (br#"{"channel_names": {"0": "T1"}, "labels": {"a": -1}, "numTraining": 1}"#, "non-negative"),
            (br#"{"channel_names": {"0": "T1"}, "labels": {"a": 0}}"#, "numTraining"),
            (br#"{"channel_names": {"0": "T1"}, "labels": {"a": 0}, "numTraining": 1, "file_ending": ".mha"}"#, "file_ending"),
        ] {
            let e = parse_dataset_json(text, Path::new("ds/dataset.json"))
                .err()
                .unwrap_or_else(|| panic!("accepted {}", String::from_utf8_lossy(text)));
            let msg = e.to_string();
            assert!(msg.contains("ds/dataset.json") && msg.contains(needle), "{msg}");
        }
    }
}
