"""Floor 0, shared by every stage: errors, atomic files and locks, on-disk formats and the image
rules (decode, convert, guard, resize; the one ``PATCH`` size). Imports nothing of patchcollide's."""
