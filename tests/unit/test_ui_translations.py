"""Every message of the pages has its Korean translation (and every translation a message): the
dictionary is read by running i18n.js in Node (the FHIR engine's), the messages from the pages' code."""

import json
import os
import re
import subprocess
from html.parser import HTMLParser

import pytest

from neuronova.ui.routes import STATIC_DIR
from support.fhir import node_executable

SCRIPTS = ("upload-dialog.js", "dashboard.js", "worklist.js")
STRING = r"'((?:[^'\\]|\\.)*)'"


def read(name: str) -> str:
    with open(os.path.join(STATIC_DIR, name), encoding="utf-8") as source:
        return source.read()


@pytest.fixture(scope="module")
def korean() -> dict[str, str]:
    program = ("global.window = {navigator: {languages: ['ko-KR', 'ko']}}; global.document = {};"
               f"require({json.dumps(os.path.join(STATIC_DIR, 'i18n.js'))});"
               "const i18n = window.NeuroNovaI18n;"
               "process.stdout.write(JSON.stringify({lang: i18n.lang, ko: i18n.dictionaries.ko,"
               " sample: i18n.t('Sending {percent}%', {percent: 5}), files: i18n.plural(3, 'file')}));")
    answer = json.loads(subprocess.run([node_executable(), "-e", program], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    assert (answer["lang"], answer["sample"], answer["files"]) == ("ko", "전송 중 5%", "파일 3개")
    return answer["ko"]


def first_argument(source: str, start: int) -> str:
    """The text of the first argument of the call whose "(" is at `start`."""
    depth, index, quoted = 0, start, False
    while index < len(source):
        character = source[index]
        if quoted:
            if character == "\\":
                index += 1
            elif character == "'":
                quoted = False
        elif character == "'":
            quoted = True
        elif character in "([{":
            depth += 1
        elif character in ")]}":
            depth -= 1
            if depth == 0:
                return source[start + 1:index]
        elif character == "," and depth == 1:
            return source[start + 1:index]
        index += 1
    raise AssertionError(f"unbalanced call at {start}")


def messages_in_code(source: str) -> set[str]:
    """t('...'), t('...' + '...') and t(condition ? '...' : '...') first arguments."""
    found = set()
    for match in re.finditer(r"\bt\(", source):
        argument = first_argument(source, match.end() - 1)
        outside = re.sub(STRING, lambda literal: "_" * len(literal.group(0)), argument)
        if "?" in outside:  # a condition: the messages are its two outcomes
            argument = argument[outside.index("?"):]
        literals = [re.sub(r"\\(.)", r"\1", text) for text in re.findall(STRING, argument)]
        if not literals:
            continue  # a variable: the values are checked below
        found.update(literals if "?" in outside else ["".join(literals)])
    return found


class _Marked(HTMLParser):
    """Texts of data-i18n elements (with their context) and data-i18n-attr attribute values."""

    def __init__(self):
        super().__init__()
        self.texts, self.open, self.depth = [], [], 0

    VOID = {"input", "link", "meta", "br", "img", "hr"}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "data-i18n-attr" in attributes:
            self.texts += [attributes[name] for name in attributes["data-i18n-attr"].split() if name in attributes]
        if tag in self.VOID:
            return
        self.open.append((attributes.get("data-i18n"), "data-i18n" in attributes, []))

    def handle_endtag(self, tag):
        context, marked, parts = self.open.pop()
        text = " ".join("".join(parts).split())
        if marked:
            self.texts.append(text + ("|" + context if context else ""))
        if self.open:
            self.open[-1][2].append("".join(parts))

    def handle_data(self, data):
        if self.open:
            self.open[-1][2].append(data)


def marked_in_html(html: str) -> list[str]:
    parser = _Marked()
    parser.feed(html)
    return parser.texts


def upload_dialog_template() -> str:
    template = re.search(r"var TEMPLATE = \[(.*?)\]\.join", read("upload-dialog.js"), re.S).group(1)
    return "\n".join(re.findall(STRING, template))


def all_messages() -> set[str]:
    messages = set()
    for name in SCRIPTS:
        messages |= messages_in_code(read(name))
    messages |= set(marked_in_html(read("index.html"))) | set(marked_in_html(upload_dialog_template()))
    worklist = read("worklist.js")
    messages |= set(re.findall(STRING, re.search(r"var ACTIONS = \[(.*?)\];", worklist, re.S).group(1)))
    messages |= set(re.findall(r":\s*" + STRING, re.search(r"var WHY = \{(.*?)\};", worklist, re.S).group(1)))
    messages |= set(re.findall(STRING, re.search(r"var title = \{(.*?)\}", worklist, re.S).group(1)))
    return messages


def test_the_scanner_finds_what_the_code_asks_for():
    assert messages_in_code("t('a ' +\n 'b', {x: 1}); t(n === 'x' ? 'one' : 'many'); t(action);") == {
        "a b", "one", "many"}
    assert marked_in_html('<p data-i18n>Hello\n  world</p><th data-i18n="column">Stored</th>'
                          '<input placeholder="Find" data-i18n-attr="placeholder">') == [
        "Hello world", "Stored|column", "Find"]


def test_every_message_has_its_korean_translation(korean):
    messages = all_messages()
    assert len(messages) > 150
    missing = sorted(message for message in messages if message not in korean)
    assert missing == [], f"messages without a Korean translation: {missing}"


def test_every_translation_belongs_to_a_message(korean):
    unused = sorted(set(korean) - all_messages())
    assert unused == [], f"translations no page asks for: {unused}"


def test_translations_keep_the_placeholders(korean):
    for message, translation in korean.items():
        assert sorted(re.findall(r"\{\w+\}", message)) == sorted(re.findall(r"\{\w+\}", translation)), message


def test_the_predecessors_dialog_in_korean(korean):
    assert {message: korean[message] for message in (
        "Upload DICOM", "Upload DICOM File", "Select DICOM File", "Assign to Patient (Optional)", "Search patient...",
        "No patient selected (use existing metadata)", "Cancel", "Upload", "Uploading...",
        "Uploaded and converted successfully: {files}, {instances} stored",
        "Please select a DICOM file (.dcm or .dicom)")} == {
        "Upload DICOM": "DICOM 업로드", "Upload DICOM File": "DICOM 파일 업로드",
        "Select DICOM File": "DICOM 파일 선택",
        "Assign to Patient (Optional)": "환자 배정 (선택)", "Search patient...": "환자 검색...",
        "No patient selected (use existing metadata)": "선택된 환자 없음 (기존 메타데이터 사용)", "Cancel": "취소",
        "Upload": "업로드", "Uploading...": "업로드 중...",
        "Uploaded and converted successfully: {files}, {instances} stored":
            "업로드 및 변환 완료: {files}, {instances} 저장",
        "Please select a DICOM file (.dcm or .dicom)": "DICOM 파일(.dcm 또는 .dicom)을 선택하세요"}
