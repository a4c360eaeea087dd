/*
 * NeuroNova ingest: the pages' language. The browser's preferred languages (navigator.languages, what
 * it also sends as Accept-Language) choose Korean or English; English is the fallback. Messages are
 * written in English in the code and looked up here: `t(text, {name: value})`, `plural(count, noun)`.
 * Data (patient names in Hangul, IDs, the server's error texts) is shown as it is stored.
 */
(function (window, document) {
  'use strict';

  if (window.NeuroNovaI18n) {
    return;
  }

  var SUPPORTED = ['ko', 'en'];

  var NOUNS = {
    ko: {file: '파일', instance: '인스턴스', patient: '환자', study: '검사', series: '시리즈', entry: '항목',
         candidate: '후보'}
  };

  var ENGLISH_PLURALS = {entry: 'entries', study: 'studies', series: 'series'};

  var KO = {
    // The dashboard
    'Studies': '검사 목록',
    'Pages': '페이지',
    'Worklist': '확인 필요',
    'History': '수신 이력',
    'Refresh': '새로 고침',
    'Upload DICOM': 'DICOM 업로드',
    'Storage': '저장소',
    'Received': '수신',
    'On disk': '디스크 사용',
    'Saved': '절감',
    'Compress existing storage': '기존 저장소 압축',
    'Compress every file stored as received (for example before the plugin was installed); Orthanc stays in use meanwhile':
      '받은 그대로 저장된 모든 파일을 압축합니다(예: 플러그인 설치 이전 파일). 그동안에도 Orthanc를 계속 사용할 수 있습니다',
    'Compression of the existing storage': '기존 저장소 압축',
    'Filter': '필터',
    'Filter by patient, ID, description or modality...': '환자, ID, 설명 또는 모달리티로 필터...',
    'Loading...': '불러오는 중...',
    'Studies stored in the PACS, most recently received first': 'PACS에 저장된 검사, 최근 수신 순',
    'Patient': '환자',
    'Study date': '검사일',
    'Description': '설명',
    'Modalities': '모달리티',
    'Series': '시리즈',
    'Instances': '인스턴스',
    'Stored|column': '저장 용량',
    'Saved by compression': '압축으로 절감',
    'Open': '열기',
    'No study matches the filter.': '필터에 맞는 검사가 없습니다.',
    'No study stored yet. Press "Upload DICOM" to add some.': '저장된 검사가 없습니다. "DICOM 업로드"를 눌러 추가하세요.',
    '(no name)': '(이름 없음)',
    'Accession {number}': '접수번호 {number}',
    'No ingest history for this study': '이 검사의 수신 이력이 없습니다',
    '{size} received': '{size} 수신',
    'the study {what} of {who}': '{who}의 검사 {what}',
    'Open in viewer': '뷰어에서 열기',
    'Open {which} in the OHIF Viewer': '{which}을(를) OHIF 뷰어에서 열기',
    'Open in Explorer': 'Explorer에서 열기',
    'Open {which} in Orthanc Explorer': '{which}을(를) Orthanc Explorer에서 열기',
    'Move to patient...': '환자 변경...',
    'Move {which} to another patient': '{which}을(를) 다른 환자로 옮기기',
    'The viewer is not available: {error}.': '뷰어를 사용할 수 없습니다: {error}.',
    'Showing {shown} of {total} studies, most recently received first. Updated {time}.':
      '검사 {total}건 중 {shown}건 표시, 최근 수신 순. {time} 갱신.',
    'Could not load the study list: {error}': '검사 목록을 불러오지 못했습니다: {error}',
    '{count} compressed': '{count}개 압축',
    '{count} already compressed': '{count}개 이미 압축됨',
    '{count} kept as received': '{count}개 받은 그대로 유지',
    '{count} failed': '{count}개 실패',
    '{files} compressed, {plain} as received': '{files} 압축, {plain}개 받은 그대로',
    '{count} waiting': '{count}개 대기',
    'compression in the background': '백그라운드 압축',
    'compression at ingest': '수신 시 압축',
    '{instances} stored before the plugin is not counted yet: "Compress existing storage" takes it in.':
      '플러그인 이전에 저장된 {instances}은(는) 아직 집계되지 않았습니다: "기존 저장소 압축"이 포함합니다.',
    '{instances} stored before the plugin are not counted yet: "Compress existing storage" takes them in.':
      '플러그인 이전에 저장된 {instances}은(는) 아직 집계되지 않았습니다: "기존 저장소 압축"이 포함합니다.',
    'Counting files...': '파일 수 세는 중...',
    'Counting files': '파일 수 세는 중',
    'Compressing the existing storage: counting the stored files...': '기존 저장소 압축 중: 저장된 파일 수를 세는 중...',
    'Compressing the existing storage: {scanned} of {total} scanned, {counts}':
      '기존 저장소 압축 중: {total} 중 {scanned}개 검사, {counts}',
    '{rate} files/s': '초당 {rate}개',
    'Compression of the existing storage done{when}: {scanned} scanned, {counts}.':
      '기존 저장소 압축 완료{when}: {scanned} 검사, {counts}.',
    'Compression of the existing storage stopped{when}: {error} ({scanned} of {total} scanned, {counts}).':
      '기존 저장소 압축 중단{when}: {error} ({total} 중 {scanned}개 검사, {counts}).',
    'unknown error': '알 수 없는 오류',
    'Could not load the storage figures: {error}': '저장소 현황을 불러오지 못했습니다: {error}',
    'Could not start the compression of the existing storage: {error}': '기존 저장소 압축을 시작하지 못했습니다: {error}',
    'HTTP {status}': 'HTTP {status}',

    // The worklist
    'Studies whose patient is not settled': '환자 확인이 필요한 검사',
    'Images whose patient the EMR could not confirm: unknown to the EMR (unmatched), EMR unreachable (unverified) or in a study of another patient (conflict). Move each study to its patient; settled studies stay in the history.':
      'EMR이 환자를 확인하지 못한 영상입니다: EMR에 없는 환자(unmatched), EMR 연결 불가(unverified), 다른 환자의 검사에 속함(conflict). 각 검사를 올바른 환자로 옮기세요. 처리된 검사는 이력에 남습니다.',
    'Check again with the EMR': 'EMR에 다시 확인',
    'Received as': '수신된 정보',
    'Study': '검사',
    'From': '보낸 곳',
    'When': '수신 시각',
    'Status': '상태',
    'EMR candidates': 'EMR 후보',
    'Nothing to settle: every stored image has its EMR patient.': '확인할 항목이 없습니다: 모든 영상이 EMR 환자와 일치합니다.',
    '{studies} to settle.': '확인할 {studies}.',
    'The EMR is unavailable: candidates cannot be looked up now.': 'EMR에 연결할 수 없어 후보를 찾을 수 없습니다.',
    'Could not load the worklist: {error}': '확인 목록을 불러오지 못했습니다: {error}',
    'Issuer {issuer}': '발급처 {issuer}',
    'born {date}': '생년월일 {date}',
    'sex {sex}': '성별 {sex}',
    'also received as {ids}': '다른 수신 ID: {ids}',
    '{unsettled} of {total} unsettled': '{total} 중 {unsettled}개 확인 필요',
    'unmatched': 'EMR에 없음',
    'unverified': 'EMR 미확인',
    'conflict': '검사 충돌',
    'No candidate found.': '후보 없음.',
    'same ID under another issuer': '다른 발급처의 같은 ID',
    'an ID its images arrived with': '영상의 수신 ID',
    'same name and birth date': '같은 이름과 생년월일',
    'same name': '같은 이름',
    'same family name and birth date': '같은 성과 생년월일',
    'Move to {id}': '{id}(으)로 옮기기',
    'Move this study to {id} ({name})': '이 검사를 {id} ({name})(으)로 옮기기',
    'Other patient...': '다른 환자...',
    'Move the study of {who} ({count}) to {id} {name}? Every image is rewritten with the EMR identity; the old ID is kept in the audit trail.':
      '{who}의 검사({count})를 {id} {name}(으)로 옮길까요? 모든 영상이 EMR 환자 정보로 다시 기록되며, 이전 ID는 감사 기록에 남습니다.',
    'Study moved to {id}: {count} rewritten.': '검사를 {id}(으)로 옮겼습니다: {count} 재기록.',
    'Study settled under {id}.': '검사를 {id}(으)로 확정했습니다.',
    'Could not move the study: {error}': '검사를 옮기지 못했습니다: {error}',
    'Checked with the EMR: {coerced} moved to their patient, {unchanged} confirmed, {unmatched} still unknown.':
      'EMR 확인 결과: {coerced} 환자로 이동, {unchanged} 확인됨, {unmatched} 여전히 없음.',
    'Could not check with the EMR: {error}': 'EMR에 확인하지 못했습니다: {error}',

    // The move dialog
    'Move study to a patient': '검사를 다른 환자로 옮기기',
    'Study of {who}, {date}, {description}': '{who}의 검사, {date}, {description}',
    'Choose the EMR patient': 'EMR 환자 선택',
    'Choose a patient': '환자를 선택하세요',
    'Move': '옮기기',

    // The history
    'Ingest history': '수신 이력',
    'Every image the PACS received, newest first: what the plugin decided about its patient and how it stored it.':
      'PACS가 받은 모든 영상(최신순): 플러그인이 환자를 어떻게 판단하고 어떻게 저장했는지 보여줍니다.',
    'Patient ID': '환자 ID',
    'Study Instance UID': 'Study Instance UID',
    'Action': '처리',
    'Date': '날짜',
    'Any': '전체',
    'Apply': '적용',
    'Reset': '초기화',
    'Time': '시각',
    'Path': '경로',
    'Patient before': '이전 환자',
    'Patient after': '저장된 환자',
    'Size': '크기',
    'User': '사용자',
    'Note': '비고',
    'Previous': '이전',
    'Next': '다음',
    'Page {page}': '{page} 페이지',
    'Page {page} of {pages}': '{page} / {pages} 페이지',
    'No entry matches the filters.': '조건에 맞는 이력이 없습니다.',
    'Could not load the history: {error}': '이력을 불러오지 못했습니다: {error}',
    'assigned': '지정',
    'coerced': 'EMR 정보로 수정',
    'unchanged': '변경 없음',
    'rejected': '거부',
    'recovered': '복구',
    'moved': '환자 변경',

    // The upload dialog (the predecessor's messages first)
    'Upload DICOM File': 'DICOM 파일 업로드',
    'Select DICOM File': 'DICOM 파일 선택',
    'Assign to Patient (Optional)': '환자 배정 (선택)',
    'Search patient...': '환자 검색...',
    'No patient selected (use existing metadata)': '선택된 환자 없음 (기존 메타데이터 사용)',
    'Cancel': '취소',
    'Upload': '업로드',
    'Uploading...': '업로드 중...',
    'Please select a DICOM file (.dcm or .dicom)': 'DICOM 파일(.dcm 또는 .dicom)을 선택하세요',
    'Drop DICOM files, a folder or a ZIP archive here (.dcm, .dicom, .zip or files without an extension), NIfTI volumes (.nii, .nii.gz), or':
      'DICOM 파일, 폴더, ZIP 압축 파일(.dcm, .dicom, .zip 또는 확장자 없는 파일) 또는 NIfTI 볼륨(.nii, .nii.gz)을 여기에 놓거나,',
    'A new study of the chosen patient': '선택한 환자의 새 검사',
    'NIfTI volumes': 'NIfTI 볼륨',
    'Put them in': '저장할 검사',
    'Label map (stored as a Segmentation of a series of that study)': '레이블 맵 (그 검사의 시리즈에 대한 Segmentation으로 저장)',
    '4-D file: one series per volume': '4차원 파일: 볼륨마다 시리즈 하나',
    'no date': '날짜 없음',
    '{series} of {instances} stored': '{series}, {instances} 저장됨',
    'Choose files': '파일 선택',
    'Choose folder': '폴더 선택',
    'Select a folder': '폴더 선택',
    'Files to upload': '업로드할 파일',
    'Overall progress': '전체 진행률',
    'Close': '닫기',
    'Remove': '삭제',
    'Remove {name}': '{name} 삭제',
    'Progress of {name}': '{name} 진행률',
    'Not taken: {names}': '제외됨: {names}',
    'No file selected.': '선택된 파일이 없습니다.',
    '{files}, {size}': '{files}, {size}',
    '{answered} of {files} done, {sent} of {total} sent': '{files} 중 {answered}개 완료, {total} 중 {sent} 전송',
    'Could not load the patient list: {error}': '환자 목록을 불러오지 못했습니다: {error}',
    'Showing {shown} of {total} patients: type to narrow the list.': '환자 {total}명 중 {shown}명 표시: 입력해서 범위를 좁히세요.',
    '{patients} found.': '{patients} 찾음.',
    'Waiting': '대기 중',
    'Sending {percent}%': '전송 중 {percent}%',
    'Sent, processing on the server...': '전송 완료, 서버에서 처리 중...',
    'Cancelled after sending: the server may have stored it': '전송 후 취소됨: 서버에 저장되었을 수 있습니다',
    'Cancelled': '취소됨',
    'Server busy: sending again in {seconds} s': '서버 사용 중: {seconds}초 후 다시 전송',
    'Failed: {error}': '실패: {error}',
    '{files} refused': '{files} 거부됨',
    '{stored} stored, {failed} failed': '{stored}개 저장, {failed}개 실패',
    '{instances} stored': '{instances} 저장됨',
    'Already stored': '이미 저장됨',
    'Stored': '저장됨',
    'Cancelled (not sent)': '취소됨 (전송 안 함)',
    'Upload cancelled.': '업로드가 취소되었습니다.',
    'Upload finished.': '업로드가 끝났습니다.',
    'Uploaded and converted successfully: {files}, {instances} stored': '업로드 및 변환 완료: {files}, {instances} 저장',
    ' ({count} already stored)': ' ({count}개는 이미 저장됨)',
    ' for patient {ids}': ', 환자 {ids}',
    'Open the study list': '검사 목록 열기',
    '{files} failed:': '{files} 실패:',
    'Upload cancelled: {files} not uploaded. Press Upload to send it again.':
      '업로드 취소: {files} 업로드되지 않았습니다. 업로드를 눌러 다시 보내세요.',
    'Upload cancelled: {files} not uploaded. Press Upload to send them again.':
      '업로드 취소: {files} 업로드되지 않았습니다. 업로드를 눌러 다시 보내세요.',
    'the server did not answer (connection lost or refused)': '서버가 응답하지 않았습니다 (연결 끊김 또는 거부)',
    'not authorized (HTTP {status}): log in to Orthanc again': '권한이 없습니다 (HTTP {status}): Orthanc에 다시 로그인하세요'
  };

  var DICTIONARIES = {ko: KO};

  function preferred() {
    var languages = (window.navigator.languages && window.navigator.languages.length)
      ? window.navigator.languages : [window.navigator.language || 'en'];
    for (var i = 0; i < languages.length; i++) {
      var primary = String(languages[i]).toLowerCase().split('-')[0];
      if (SUPPORTED.indexOf(primary) >= 0) {
        return primary;
      }
    }
    return 'en';
  }

  var lang = preferred();

  function format(template, params) {
    return template.replace(/\{(\w+)\}/g, function (whole, key) {
      return params && Object.prototype.hasOwnProperty.call(params, key) ? String(params[key]) : whole;
    });
  }

  /** `text` may end in "|context" when one English word has two translations (shown without it). */
  function t(text, params) {
    var dictionary = DICTIONARIES[lang];
    var template = dictionary && Object.prototype.hasOwnProperty.call(dictionary, text) ? dictionary[text]
      : text.split('|')[0];
    return format(template, params);
  }

  /** "3 files" / "파일 3개". */
  function plural(count, noun) {
    if (lang === 'ko') {
      return (NOUNS.ko[noun] || noun) + ' ' + count + '개';
    }
    return count + ' ' + (count === 1 ? noun : ENGLISH_PLURALS[noun] || noun + 's');
  }

  /** Static text marked data-i18n (its English text is the key), and data-i18n-attr="placeholder title". */
  function translatePage(root) {
    var scope = root || document;
    Array.prototype.forEach.call(scope.querySelectorAll('[data-i18n]'), function (element) {
      if (!element.hasAttribute('data-i18n-key')) {  // data-i18n="context" picks "text|context"
        var context = element.getAttribute('data-i18n');
        element.setAttribute('data-i18n-key', element.textContent.replace(/\s+/g, ' ').trim() +
          (context ? '|' + context : ''));
      }
      element.textContent = t(element.getAttribute('data-i18n-key'));
    });
    Array.prototype.forEach.call(scope.querySelectorAll('[data-i18n-attr]'), function (element) {
      element.getAttribute('data-i18n-attr').split(/\s+/).forEach(function (name) {
        if (element.hasAttribute(name)) {
          element.setAttribute(name, t(element.getAttribute(name)));
        }
      });
    });
  }

  window.NeuroNovaI18n = {lang: lang, t: t, plural: plural, translatePage: translatePage, dictionaries: DICTIONARIES};
})(window, document);
