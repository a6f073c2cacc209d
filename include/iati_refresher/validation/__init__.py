"""The built-in IATI schema validator (XSD) producing the Validator API's report shape."""
