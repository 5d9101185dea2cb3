"""The JSON Schema of preview job payloads, shipped in the wheel as preview_worker.schemas."""
