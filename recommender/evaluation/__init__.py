"""How good the recommendations are: pure retrieval metrics (`metrics`) and the runner that loads the
catalogue from the database (`runner`)."""
