"""The dashboard's forms (Flask-WTF): each carries the session's CSRF token."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length


class SignInForm(FlaskForm):
    token = PasswordField("API token", validators=[DataRequired(), Length(max=512)])
    submit = SubmitField("Sign in")


class SignOutForm(FlaskForm):
    submit = SubmitField("Sign out")


class CancelForm(FlaskForm):
    submit = SubmitField("Yes, cancel this job")


class SubmitForm(FlaskForm):
    # The named config only chooses what the editor starts with (GET ?config=); the YAML as
    # edited is what is submitted.
    config = SelectField("Start from", validate_choice=False)
    yaml = TextAreaField("Job config (YAML)", validators=[DataRequired(), Length(max=256 * 1024)])
    # The job's tags, apart from the training config; checked by the API's schema (JobSpecSchema).
    tags = StringField("Tags (comma-separated)", validators=[Length(max=2048)])
    submit = SubmitField("Submit job")


class AnalysisForm(FlaskForm):
    # Only the CSRF token: the upload's fields are read as POST /api/v1/analyses reads them
    # (api.analysis.form_fields), so the two cannot drift apart.
    submit = SubmitField("Analyse")
