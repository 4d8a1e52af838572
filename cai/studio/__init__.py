"""`cai studio`: a local web page for editing a principle file and seeing what an edit does."""
