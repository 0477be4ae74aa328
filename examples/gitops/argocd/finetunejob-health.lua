-- Argo CD health for finetune.dev/FineTuneJob (resource.customizations.health.finetune.dev_FineTuneJob).
-- Healthy once training Succeeded; Degraded when it Failed (with the reason); Suspended while
-- suspended; Progressing otherwise, with the phase, progress and what blocks it.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick the job up"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local message = status.message or status.phase
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  if status.modelUri ~= nil then
    message = "Succeeded: model at " .. status.modelUri
  end
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  if status.failureReason ~= nil then
    message = status.failureReason .. ": " .. message
  end
elseif status.phase == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
  if status.progress ~= nil and status.progress.summary ~= nil then
    message = status.phase .. " " .. status.progress.summary .. ": " .. message
  end
end
hs.message = message
return hs
