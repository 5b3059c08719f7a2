// Why a model file cannot be used: the stable `error_code` of an invalid entry of GET /v1/models (its
// `error` is the human message, which names the numbers and may change). A model switch to such a file is
// refused with the API error `invalid_model` (or `model_not_found` for `unreadable`), naming the reason.

export const modelFileErrorCodes = {
    unreadable: "The file cannot be opened or stat'ed (missing, a broken link, no permission).",
    not_a_file: "Not a regular file (a directory, a FIFO, a device).",
    outside_models_dir: "Its real path (links resolved) is outside the models directory; only the model named at startup may lie elsewhere.",
    not_gguf: "Not a GGUF file: it does not start with the GGUF magic bytes, or (at a model switch) its name does not end in `.gguf`.",
    unsupported_version: "A GGUF version llama.cpp does not read (only 2 and 3), or a big-endian file.",
    truncated_header: "A count or length in the header needs more bytes than the file has (a cut download, or a hostile count).",
    corrupt_header: "The header breaks a rule llama.cpp enforces: an invalid or nested type, an empty or duplicate key, a bad alignment, a bad tensor shape, type or offset.",
    header_limit: "A count, length or the metadata's size beyond the reader's caps, which are far above any real model's (see docs/reliability.md).",
    truncated_data: "The header is intact but the tensor data runs past the end of the file.",
    no_architecture: "The metadata has no `general.architecture` string.",
    unsupported_architecture: "An architecture this llama.cpp does not know.",
    no_tensors: "The file has no tensors (a vocabulary-only GGUF).",
    inspection_failed: "Reading the header took longer than 15 s or more than 128 MiB; the reader's process was killed."
} as const;

export type ModelFileErrorCode = keyof typeof modelFileErrorCodes;
