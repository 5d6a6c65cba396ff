"""`make eval`: retrieval quality of the rag service against plain pipelines on a real manual."""
