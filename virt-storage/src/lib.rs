//! Storage layer: volumes, disk formats, import, clone and golden images (see issue 3).
