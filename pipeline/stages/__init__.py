"""The stages, one thin module each: read artefacts, call the libraries, write artefacts. A stage never
imports another stage; what they share lives in :mod:`.base`."""
