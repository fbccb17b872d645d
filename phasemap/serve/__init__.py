"""The live web view of a storage root: `phasemap serve ROOT` (`app`), its JSON API (`api`),
read-only SQL (`readonly`) and the page (`static/`). Reading needs no Ray and no torch."""
