//! Status writes: a merge patch guarded by the resourceVersion the plan was made from.
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::api::{VidiJob, VidiJobStatus};

use super::Error;
use super::controller::Context;
use super::observe::MANAGER;

/// Writes the status with a merge patch guarded by the resourceVersion the plan was made from;
/// fields the new status drops are removed explicitly. `Ok(false)`: the job changed since (409),
/// nothing was written.
pub(super) async fn write_status(
    ctx: &Context,
    job: &VidiJob,
    old: &VidiJobStatus,
    new: &VidiJobStatus,
) -> Result<bool, Error> {
    let mut body = serde_json::to_value(new).map_err(Error::Serialize)?;
    if let (Value::Object(map), Ok(Value::Object(before))) = (&mut body, serde_json::to_value(old)) {
        for key in before.keys() {
            map.entry(key.clone()).or_insert(Value::Null);
        }
    }
    let ns = job.namespace().unwrap_or_default();
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let patch = json!({
        "metadata": {"resourceVersion": job.metadata.resource_version},
        "status": body,
    });
    match super::write::patch_status::<VidiJob, _>(&ctx.client, &ns, &job.name_any(), &params, &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::Write {
            what: format!("VidiJob {ns}/{} status", job.name_any()),
            source,
        }),
    }
}
